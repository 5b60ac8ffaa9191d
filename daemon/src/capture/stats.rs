//! Capture metrics, read at scrape time: the per-CPU event counters the BPF programs keep, how
//! many workloads are enrolled, and where each program is attached. Reading at scrape time means no
//! polling task and numbers that are exact when they are read.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aya::maps::{MapData, PerCpuArray};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The `enum stat` of capture.c, in order.
const EVENTS: [&str; 5] = [
    "redirected",
    "original_destination_answered",
    "inbound_syn_marked",
    "inbound_flow_marked",
    "inbound_assigned",
];

pub struct CaptureStats {
    pub(super) counters: PerCpuArray<MapData, u64>,
    pub enrolled: Arc<AtomicUsize>,
    pub(super) attachments: super::ebpf::Attachments,
}

impl std::fmt::Debug for CaptureStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureStats").finish_non_exhaustive()
    }
}

impl Collector for CaptureStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(self.enrolled.load(Ordering::Relaxed) as i64);
        gauge.encode(encoder.encode_descriptor(
            "weft_capture_enrolled_workloads",
            "Workloads whose connections eBPF capture sends through weftd",
            None,
            gauge.metric_type(),
        )?)?;
        let mut attached = encoder.encode_descriptor(
            "weft_capture_attached",
            "Capture programs per attach point (cgroup, netns, interface): 1 attached, 0 failed",
            None,
            MetricType::Gauge,
        )?;
        if let Ok(a) = self.attachments.lock() {
            for ((program, target), error) in a.iter() {
                let labels = [("program", *program), ("target", target.as_str())];
                ConstGauge::new(i64::from(error.is_none()))
                    .encode(attached.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "weft_capture_events",
            "Capture events counted by the BPF programs (redirected: outbound connects rewritten to weftd)",
            None,
            MetricType::Counter,
        )?;
        for (i, event) in EVENTS.iter().enumerate() {
            // A read error skips the series for this scrape rather than failing the scrape.
            let Ok(values) = self.counters.get(&(i as u32), 0) else {
                continue;
            };
            let total: u64 = values.iter().sum();
            ConstCounter::new(total).encode(family.encode_family(&[("event", *event)])?)?;
        }
        Ok(())
    }
}
