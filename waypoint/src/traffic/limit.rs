//! Local rate limits: token buckets as Envoy's local rate limit keeps them (`maxTokens` at
//! most, `tokensPerFill` added every whole `fillInterval`), one for all requests or one per
//! source identity.
//!
//! Hand-written rather than `governor`: governor's GCRA spreads a quota evenly over its
//! period, while the policy promises Envoy's discrete fills (a burst of `maxTokens`, then
//! `tokensPerFill` at each interval), which is also what `x-ratelimit-reset` reports.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use weft_core::model::route::parse_duration;
use weft_core::model::traffic::RateLimit;

/// Sources with a bucket of their own, at most; beyond it, sources whose bucket is full
/// (the same as a new one) are forgotten, then new ones share one overflow bucket.
const MAX_SOURCES: usize = 10_000;

#[derive(Debug)]
pub struct Limiter {
    pub spec: RateLimit,
    max: u32,
    per_fill: u32,
    interval: Duration,
    shared: Mutex<Bucket>,
    by_source: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    filled: Instant,
}

/// A limit's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the next fill.
    pub reset: Duration,
}

impl Bucket {
    fn refill(&mut self, l: &Limiter, now: Instant) {
        let since = now.saturating_duration_since(self.filled);
        let fills = since.as_nanos() / l.interval.as_nanos().max(1);
        if fills > 0 {
            let added = (fills.min(u32::MAX as u128) as u32).saturating_mul(l.per_fill);
            self.tokens = self.tokens.saturating_add(added).min(l.max);
            self.filled += l
                .interval
                .saturating_mul(fills.min(u32::MAX as u128) as u32);
        }
    }

    fn take(&mut self, l: &Limiter, now: Instant) -> Verdict {
        self.refill(l, now);
        let allowed = self.tokens > 0;
        if allowed {
            self.tokens -= 1;
        }
        Verdict {
            allowed,
            limit: l.max,
            remaining: self.tokens,
            reset: l
                .interval
                .saturating_sub(now.saturating_duration_since(self.filled)),
        }
    }

    fn is_full(&self, l: &Limiter, now: Instant) -> bool {
        let mut b = *self;
        b.refill(l, now);
        b.tokens >= l.max
    }
}

impl Limiter {
    /// A limit from a validated policy (`None` if its interval does not parse).
    pub fn compile(spec: &RateLimit) -> Option<Self> {
        let interval = parse_duration(&spec.fill_interval)?.max(Duration::from_millis(1));
        let max = spec.max_tokens.max(1);
        let now = Instant::now();
        Some(Limiter {
            spec: spec.clone(),
            max,
            per_fill: spec.tokens_per_fill.unwrap_or(max).max(1),
            interval,
            shared: Mutex::new(Bucket {
                tokens: max,
                filled: now,
            }),
            by_source: Mutex::new(HashMap::new()),
        })
    }

    /// Whether it covers a request that took `route` (`namespace/name`).
    pub fn covers(&self, policy_namespace: &str, route: Option<&str>) -> bool {
        self.spec.routes.is_empty()
            || route.is_some_and(|r| {
                r.split_once('/').is_some_and(|(ns, name)| {
                    ns == policy_namespace && self.spec.routes.iter().any(|n| n == name)
                })
            })
    }

    /// Takes a token for a request from `source`.
    pub fn take(&self, source: &str) -> Verdict {
        let now = Instant::now();
        if !self.spec.per_source {
            return lock(&self.shared).take(self, now);
        }
        let mut m = lock(&self.by_source);
        if let Some(b) = m.get_mut(source) {
            return b.take(self, now);
        }
        if m.len() >= MAX_SOURCES {
            m.retain(|_, b| !b.is_full(self, now));
        }
        if m.len() >= MAX_SOURCES {
            drop(m);
            return lock(&self.shared).take(self, now);
        }
        let mut b = Bucket {
            tokens: self.max,
            filled: now,
        };
        let v = b.take(self, now);
        m.insert(source.to_owned(), b);
        v
    }

    /// Gives back a token taken for a request that another limit then refused.
    pub fn give_back(&self, source: &str) {
        let put = |b: &mut Bucket| b.tokens = (b.tokens + 1).min(self.max);
        if self.spec.per_source
            && let Some(b) = lock(&self.by_source).get_mut(source)
        {
            put(b);
            return;
        }
        put(&mut lock(&self.shared));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_source: bool) -> Limiter {
        Limiter::compile(&RateLimit {
            max_tokens: 3,
            tokens_per_fill: Some(1),
            fill_interval: "100ms".into(),
            routes: vec![],
            per_source,
        })
        .unwrap()
    }

    #[test]
    fn a_burst_of_max_tokens_then_one_per_fill() {
        let l = limiter(false);
        let t0 = lock(&l.shared).filled;
        let mut b = *lock(&l.shared);
        let took: Vec<bool> = (0..4).map(|_| b.take(&l, t0).allowed).collect();
        assert_eq!(took, [true, true, true, false]);
        let v = b.take(&l, t0 + Duration::from_millis(40));
        assert!(!v.allowed);
        assert_eq!(v.reset, Duration::from_millis(60));
        assert!(b.take(&l, t0 + Duration::from_millis(100)).allowed);
        assert!(!b.take(&l, t0 + Duration::from_millis(150)).allowed);
        // A long pause fills to the brim, not beyond.
        let v = b.take(&l, t0 + Duration::from_secs(10));
        assert!(v.allowed);
        assert_eq!(v.remaining, 2);
    }

    #[test]
    fn per_source_buckets_are_separate() {
        let l = limiter(true);
        for _ in 0..3 {
            assert!(l.take("spiffe://a").allowed);
        }
        assert!(!l.take("spiffe://a").allowed);
        assert!(l.take("spiffe://b").allowed);
        l.give_back("spiffe://a");
        assert!(l.take("spiffe://a").allowed);
    }
}
