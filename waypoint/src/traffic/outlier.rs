//! Outlier detection (passive health checking), as Envoy does it: an endpoint whose answers
//! keep failing is ejected for `baseEjectionTime` times the number of its ejections (capped
//! at [`MAX_EJECTION`]), never more of the Service than `maxEjectionPercent` (at least one
//! endpoint may always go), and comes back when its time is up. Each `interval` an endpoint
//! stays back without being ejected again takes one off its count.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use weft_core::model::route::parse_duration;
use weft_core::model::traffic::OutlierDetection;

use super::balance::{EndpointStats, Health, Outcome};

/// The longest one ejection lasts, whatever the count (Envoy's `max_ejection_time` default).
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Settings {
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    #[serde(with = "super::millis")]
    pub interval: Duration,
    #[serde(with = "super::millis")]
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

impl Settings {
    /// The policy's settings with Envoy's defaults for what it leaves out.
    pub fn compile(o: &OutlierDetection) -> Self {
        let d =
            |v: &Option<String>, default| v.as_deref().and_then(parse_duration).unwrap_or(default);
        Settings {
            consecutive_5xx: o.consecutive_5xx_errors.unwrap_or(5),
            consecutive_gateway: o.consecutive_gateway_errors.unwrap_or(0),
            interval: d(&o.interval, Duration::from_secs(10)),
            base_ejection: d(&o.base_ejection_time, Duration::from_secs(30)),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(10).min(100),
        }
    }
}

#[derive(Debug, Default)]
pub struct Ejection {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// Ejected until then.
    until: Option<Instant>,
    /// Ejections counted towards the next one's length.
    count: u32,
    /// When it last came back.
    back_since: Option<Instant>,
    /// The endpoint left the Service; its stats live on only in requests in flight.
    gone: bool,
}

impl Ejection {
    #[cfg(test)]
    pub fn is_ejected(&self) -> bool {
        self.until.is_some()
    }

    /// Marks the endpoint gone; whether it was ejected (and so counted).
    pub fn forget(&mut self) -> bool {
        self.gone = true;
        self.until.take().is_some()
    }
}

/// Whether the endpoint is out now; one whose time is up is readmitted here.
pub fn is_out(s: &EndpointStats, ejected: &AtomicU32, now: Instant) -> bool {
    let mut h = s.health();
    match h.ejection.until {
        Some(t) if now < t => true,
        Some(_) => {
            h.ejection.until = None;
            h.ejection.back_since = Some(now);
            ejected.fetch_sub(1, Ordering::Relaxed);
            tracing::info!("endpoint readmitted after its ejection");
            false
        }
        None => false,
    }
}

pub(super) fn observe(
    h: &mut Health,
    o: &Settings,
    outcome: Outcome,
    ejected: &AtomicU32,
    endpoints: usize,
    now: Instant,
) {
    let e = &mut h.ejection;
    if e.gone {
        return;
    }
    let (is_5xx, is_gateway) = match outcome {
        Outcome::Status(s) => ((500..600).contains(&s), matches!(s, 502..=504)),
        Outcome::ConnectFailure | Outcome::Reset => (true, true),
    };
    e.consecutive_5xx = if is_5xx { e.consecutive_5xx + 1 } else { 0 };
    e.consecutive_gateway = if is_gateway {
        e.consecutive_gateway + 1
    } else {
        0
    };
    if e.until.is_some() {
        return;
    }
    let tripped = (o.consecutive_5xx > 0 && e.consecutive_5xx >= o.consecutive_5xx)
        || (o.consecutive_gateway > 0 && e.consecutive_gateway >= o.consecutive_gateway);
    if !tripped {
        return;
    }
    let allowed = (endpoints * o.max_ejection_percent as usize / 100).max(1);
    if ejected.load(Ordering::Relaxed) as usize >= allowed {
        return;
    }
    if let Some(back) = e.back_since {
        let quiet = now.saturating_duration_since(back).as_nanos() / o.interval.as_nanos().max(1);
        e.count = e.count.saturating_sub(quiet.min(u32::MAX as u128) as u32);
    }
    e.count = e.count.saturating_add(1);
    let length = o
        .base_ejection
        .saturating_mul(e.count)
        .min(MAX_EJECTION.max(o.base_ejection));
    e.until = Some(now + length);
    e.consecutive_5xx = 0;
    e.consecutive_gateway = 0;
    ejected.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        ejection = e.count,
        seconds = length.as_secs_f64(),
        "endpoint ejected after consecutive errors"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::balance::Endpoints;
    use std::sync::Arc;

    fn settings() -> Settings {
        Settings::compile(&OutlierDetection {
            consecutive_5xx_errors: Some(3),
            base_ejection_time: Some("1s".into()),
            max_ejection_percent: Some(50),
            ..Default::default()
        })
    }

    fn workload(uid: &str) -> Arc<weft_core::model::Workload> {
        let text = format!(
            "workloads:\n  - {{name: {uid}, uid: {uid}, namespace: default, serviceAccount: a, ips: [10.0.0.1], node: n}}\n"
        );
        let state = weft_core::config::load_str(&text, "mesh.yaml", std::path::Path::new("/"))
            .unwrap_or_else(|e| panic!("{e}"))
            .state;
        state.workloads[0].clone()
    }

    #[test]
    fn ejected_after_consecutive_errors_within_the_share_and_back_in_time() {
        let eps = Endpoints::default();
        let o = settings();
        let (a, b) = (workload("a"), workload("b"));
        let (sa, sb) = (eps.stats(&a), eps.stats(&b));
        for _ in 0..2 {
            eps.record(&sa, Duration::ZERO, Outcome::Status(503), Some(&o), 2);
        }
        eps.record(&sa, Duration::ZERO, Outcome::Status(200), Some(&o), 2);
        for _ in 0..2 {
            eps.record(&sa, Duration::ZERO, Outcome::Status(500), Some(&o), 2);
        }
        assert!(
            !sa.health().ejection.is_ejected(),
            "a success resets the run"
        );
        eps.record(&sa, Duration::ZERO, Outcome::ConnectFailure, Some(&o), 2);
        assert!(sa.health().ejection.is_ejected());
        // 50% of two: b may not go too.
        for _ in 0..3 {
            eps.record(&sb, Duration::ZERO, Outcome::Status(503), Some(&o), 2);
        }
        assert!(!sb.health().ejection.is_ejected());
        let all = [&a, &b];
        for _ in 0..20 {
            let (w, _) = eps.pick(Default::default(), None, 2, |i| all[i]).unwrap();
            assert_eq!(w.uid, "b", "the ejected endpoint is passed over");
        }
        let later = Instant::now() + Duration::from_millis(1100);
        assert!(!is_out(&sa, &eps.ejected, later), "back after its time");
        assert_eq!(eps.ejected.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn every_endpoint_ejected_means_all_are_used() {
        let eps = Endpoints::default();
        let o = Settings {
            max_ejection_percent: 100,
            ..settings()
        };
        let a = workload("a");
        let sa = eps.stats(&a);
        for _ in 0..3 {
            eps.record(&sa, Duration::ZERO, Outcome::Status(503), Some(&o), 1);
        }
        assert!(sa.health().ejection.is_ejected());
        assert!(eps.pick(Default::default(), None, 1, |_| &a).is_some());
    }
}
