//! Request tracing: the trace a request belongs to (W3C `traceparent`, else B3 single or
//! multi header), continued with a span of the waypoint's own, and, when sampled and an OTLP
//! endpoint is configured, that span exported (`export`).
//!
//! Sampling is parent-based: a request whose trace says sampled (or not) keeps that decision;
//! a new trace is sampled with the configured probability. The span's context goes on in
//! `traceparent` always, and in the B3 form the request came with, so that applications on
//! either propagation keep their traces whole.

pub mod export;

use http::{HeaderMap, HeaderName, HeaderValue};

pub use export::Exporter;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// How the waypoint traces (from its command line).
#[derive(Default)]
pub struct Tracer {
    /// Of new traces, the share sampled, 0 to 100.
    pub sampling: f64,
    pub exporter: Option<Exporter>,
}

/// The waypoint's span of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: u128,
    pub span_id: u64,
    /// The client's span, when the request came with one.
    pub parent: Option<u64>,
    pub sampled: bool,
}

fn hex_u128(s: &str, lens: &[usize]) -> Option<u128> {
    let ok = lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| u128::from_str_radix(s, 16).ok())
        .flatten()
        .filter(|v| *v != 0)
}

fn hex_u64(s: &str) -> Option<u64> {
    hex_u128(s, &[16]).map(|v| v as u64)
}

/// (trace, parent span, sampled if said) of a valid version-00 `traceparent`.
fn w3c(v: &str) -> Option<(u128, u64, Option<bool>)> {
    let mut parts = v.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower = |s: &str| !s.bytes().any(|b| b.is_ascii_uppercase());
    if version != "00" || parts.next().is_some() || !lower(trace) || !lower(parent) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16)
        .ok()
        .filter(|_| flags.len() == 2)?;
    Some((
        hex_u128(trace, &[32])?,
        hex_u64(parent)?,
        Some(flags & 1 == 1),
    ))
}

fn b3_sampled(s: &str) -> Option<bool> {
    match s {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]`.
fn b3_single(v: &str) -> Option<(u128, u64, Option<bool>)> {
    let mut parts = v.split('-');
    let trace = hex_u128(parts.next()?, &[16, 32])?;
    let span = hex_u64(parts.next()?)?;
    let sampled = parts.next().and_then(b3_sampled);
    Some((trace, span, sampled))
}

fn header<'a>(h: &'a HeaderMap, n: &HeaderName) -> Option<&'a str> {
    h.get(n).and_then(|v| v.to_str().ok())
}

/// The request's trace: (trace, parent span, sampled if said), from the first valid of
/// `traceparent`, `b3`, `x-b3-*`.
fn parent_of(h: &HeaderMap) -> Option<(u128, u64, Option<bool>)> {
    if let Some(p) = header(h, &TRACEPARENT).and_then(w3c) {
        return Some(p);
    }
    if let Some(p) = header(h, &B3).and_then(b3_single) {
        return Some(p);
    }
    let trace = header(h, &B3_TRACE).and_then(|v| hex_u128(v, &[16, 32]))?;
    let span = header(h, &B3_SPAN).and_then(hex_u64)?;
    let sampled = if header(h, &B3_FLAGS) == Some("1") {
        Some(true)
    } else {
        header(h, &B3_SAMPLED).and_then(b3_sampled)
    };
    Some((trace, span, sampled))
}

fn nonzero_u64() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

fn set(h: &mut HeaderMap, n: HeaderName, v: String) {
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(n, v);
    }
}

impl Tracer {
    /// Continues the request's trace (or starts one) with the waypoint's span, and writes its
    /// context into the headers that go on to the backend.
    pub fn continue_trace(&self, h: &mut HeaderMap) -> SpanContext {
        let span_id = nonzero_u64();
        let parent = parent_of(h);
        let (trace_id, parent_span, sampled) = match parent {
            Some((t, s, d)) => (t, Some(s), d.unwrap_or_else(|| self.draw())),
            None => (
                loop {
                    let t = fastrand::u128(..);
                    if t != 0 {
                        break t;
                    }
                },
                None,
                self.draw(),
            ),
        };
        let flag = if sampled { "01" } else { "00" };
        set(
            h,
            TRACEPARENT,
            format!("00-{trace_id:032x}-{span_id:016x}-{flag}"),
        );
        // Whichever headers won, B3 ones present go on with the same span, or a B3 reader
        // would parent its span on the client and skip the waypoint's.
        if h.contains_key(&B3) {
            let s = if sampled { "1" } else { "0" };
            set(h, B3, format!("{trace_id:032x}-{span_id:016x}-{s}"));
        }
        if h.contains_key(&B3_TRACE) {
            // A 64-bit id stays in the form the application wrote, when it is this trace.
            let same = header(h, &B3_TRACE)
                .and_then(|v| hex_u128(v, &[16, 32]))
                .is_some_and(|t| t == trace_id);
            if !same {
                set(h, B3_TRACE, format!("{trace_id:032x}"));
            }
            set(h, B3_SPAN, format!("{span_id:016x}"));
            match parent_span {
                Some(p) => set(h, B3_PARENT, format!("{p:016x}")),
                None => {
                    h.remove(&B3_PARENT);
                }
            }
            set(h, B3_SAMPLED, if sampled { "1" } else { "0" }.to_owned());
            h.remove(&B3_FLAGS);
        }
        SpanContext {
            trace_id,
            span_id,
            parent: parent_span,
            sampled,
        }
    }

    fn draw(&self) -> bool {
        self.sampling >= 100.0 || (self.sampling > 0.0 && fastrand::f64() * 100.0 < self.sampling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(sampling: f64) -> Tracer {
        Tracer {
            sampling,
            exporter: None,
        }
    }

    #[test]
    fn a_w3c_trace_is_continued_with_its_sampling_decision() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
                .parse()
                .unwrap(),
        );
        let c = tracer(100.0).continue_trace(&mut h);
        assert_eq!(c.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(c.parent, Some(0x00f067aa0ba902b7));
        assert!(!c.sampled, "the parent said not sampled");
        let out = h[TRACEPARENT].to_str().unwrap();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(
            out.ends_with("-00") && !out.contains("00f067aa0ba902b7"),
            "{out}"
        );
    }

    #[test]
    fn b3_single_and_multi_are_read_and_carried_on() {
        let mut h = HeaderMap::new();
        h.insert(
            B3,
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
                .parse()
                .unwrap(),
        );
        let c = tracer(0.0).continue_trace(&mut h);
        assert_eq!(c.trace_id, 0x80f198ee56343ba864fe8b2a57d3eff7);
        assert!(c.sampled);
        assert_eq!(
            h[B3].to_str().unwrap(),
            format!("80f198ee56343ba864fe8b2a57d3eff7-{:016x}-1", c.span_id)
        );
        assert!(h.contains_key(TRACEPARENT));

        let mut h = HeaderMap::new();
        h.insert(B3_TRACE, "463ac35c9f6413ad".parse().unwrap());
        h.insert(B3_SPAN, "a2fb4a1d1a96d312".parse().unwrap());
        h.insert(B3_FLAGS, "1".parse().unwrap());
        let c = tracer(0.0).continue_trace(&mut h);
        assert_eq!(c.trace_id, 0x463ac35c9f6413ad);
        assert!(c.sampled, "debug means sampled");
        assert_eq!(h[B3_PARENT], "a2fb4a1d1a96d312");
        assert_eq!(h[B3_SPAN].to_str().unwrap(), format!("{:016x}", c.span_id));
        assert_eq!(h[B3_TRACE], "463ac35c9f6413ad");
    }

    #[test]
    fn new_traces_are_sampled_at_the_configured_rate() {
        let t = tracer(25.0);
        let sampled = (0..4000)
            .filter(|_| t.continue_trace(&mut HeaderMap::new()).sampled)
            .count();
        assert!((800..=1200).contains(&sampled), "{sampled}");
        let mut bad = HeaderMap::new();
        bad.insert(TRACEPARENT, "00-zz-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(tracer(0.0).continue_trace(&mut bad).parent, None);
    }
}
