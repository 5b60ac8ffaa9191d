//! OTLP/gRPC export of request spans: spans queue in a bounded channel (a full queue drops
//! the span and counts it; the request path never waits on the collector), and one task sends
//! them in batches of up to [`BATCH`] at least every [`FLUSH`], for as long as the process
//! runs (requests served while draining are exported too). A collector that is down costs the
//! batch in hand, a warning, and nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use tokio::sync::mpsc;

use super::SpanContext;

const BATCH: usize = 512;
const FLUSH: Duration = Duration::from_secs(1);
const QUEUE: usize = 4096;
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Exporter {
    tx: mpsc::Sender<Span>,
    pub dropped: Arc<AtomicU64>,
}

/// An attribute value.
pub enum Attr {
    Str(String),
    Int(i64),
}

fn kv(key: &str, v: Attr) -> KeyValue {
    let value = match v {
        Attr::Str(s) => any_value::Value::StringValue(s),
        Attr::Int(i) => any_value::Value::IntValue(i),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Exporter {
    /// Starts the export task towards `endpoint` (`http://host:4317`); the connection is made
    /// when the first batch goes.
    pub fn start(endpoint: &str, resource: Vec<(&str, String)>) -> anyhow::Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| anyhow::anyhow!("--otlp-endpoint {endpoint:?}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        let mut client = TraceServiceClient::new(channel);
        let resource = Resource {
            attributes: resource
                .into_iter()
                .map(|(k, v)| kv(k, Attr::Str(v)))
                .collect(),
            ..Default::default()
        };
        let (tx, mut rx) = mpsc::channel::<Span>(QUEUE);
        let endpoint = endpoint.to_owned();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let deadline = tokio::time::sleep(FLUSH);
                tokio::pin!(deadline);
                let open = loop {
                    tokio::select! {
                        _ = &mut deadline => break true,
                        s = rx.recv() => match s {
                            Some(s) => {
                                batch.push(s);
                                if batch.len() >= BATCH {
                                    break true;
                                }
                            }
                            None => break false,
                        },
                    }
                };
                if !batch.is_empty() {
                    let req = ExportTraceServiceRequest {
                        resource_spans: vec![ResourceSpans {
                            resource: Some(resource.clone()),
                            scope_spans: vec![ScopeSpans {
                                scope: Some(InstrumentationScope {
                                    name: "weft-waypoint".into(),
                                    version: env!("CARGO_PKG_VERSION").into(),
                                    ..Default::default()
                                }),
                                spans: std::mem::take(&mut batch),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                    };
                    match tokio::time::timeout(EXPORT_TIMEOUT, client.export(req)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(%endpoint, "exporting spans: {}", e.message()),
                        Err(_) => tracing::warn!(%endpoint, "exporting spans: timed out"),
                    }
                }
                if !open {
                    return;
                }
            }
        });
        Ok(Exporter {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues the span of a finished request.
    pub fn record(
        &self,
        ctx: &SpanContext,
        name: String,
        start: SystemTime,
        end: SystemTime,
        error: bool,
        attributes: Vec<(&str, Attr)>,
    ) {
        let s = Span {
            trace_id: ctx.trace_id.to_be_bytes().to_vec(),
            span_id: ctx.span_id.to_be_bytes().to_vec(),
            parent_span_id: ctx
                .parent
                .map(|p| p.to_be_bytes().to_vec())
                .unwrap_or_default(),
            name,
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: nanos(start),
            end_time_unix_nano: nanos(end),
            attributes: attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
            status: Some(Status {
                code: if error {
                    status::StatusCode::Error
                } else {
                    status::StatusCode::Unset
                } as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        if self.tx.try_send(s).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
