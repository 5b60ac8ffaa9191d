//! Fault injection, compiled: the first fault whose header match holds applies to a request;
//! its delay and its abort each act on their own percentage of those requests.

use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};
use regex::Regex;
use weft_core::model::route::parse_duration;
use weft_core::model::traffic::{Fault, HeaderMatchType, grpc_code};

#[derive(Debug)]
enum Match {
    Exact(HeaderName, String),
    Regex(HeaderName, Regex),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    Http(StatusCode),
    Grpc(u32),
}

#[derive(Debug)]
pub struct Compiled {
    matches: Vec<Match>,
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(Abort, f64)>,
}

/// What to do to one request.
#[derive(Debug, Default, PartialEq)]
pub struct Injected {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

impl Compiled {
    /// A fault from a validated policy; `None` for a part that would not compile (which
    /// validation has already refused).
    pub fn compile(f: &Fault) -> Option<Self> {
        let mut matches = Vec::new();
        for h in f.matches.iter().flat_map(|m| &m.headers) {
            let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
            matches.push(match h.kind {
                HeaderMatchType::Exact => Match::Exact(name, h.value.clone()),
                // Anchored, as Gateway API's header regular expressions are matched.
                HeaderMatchType::RegularExpression => {
                    Match::Regex(name, Regex::new(&format!("^(?:{})$", h.value)).ok()?)
                }
            });
        }
        let delay = match &f.delay {
            Some(d) => Some((
                parse_duration(&d.fixed_delay)?,
                d.percentage.unwrap_or(100.0),
            )),
            None => None,
        };
        let abort = match &f.abort {
            Some(a) => {
                let kind = match (a.http_status, &a.grpc_status) {
                    (Some(s), _) => Abort::Http(StatusCode::from_u16(s).ok()?),
                    (None, Some(g)) => Abort::Grpc(grpc_code(g)?),
                    (None, None) => return None,
                };
                Some((kind, a.percentage.unwrap_or(100.0)))
            }
            None => None,
        };
        Some(Compiled {
            matches,
            delay,
            abort,
        })
    }

    fn applies(&self, headers: &HeaderMap) -> bool {
        self.matches.iter().all(|m| match m {
            Match::Exact(n, v) => headers.get(n).is_some_and(|h| h.as_bytes() == v.as_bytes()),
            Match::Regex(n, r) => headers
                .get(n)
                .and_then(|h| h.to_str().ok())
                .is_some_and(|h| r.is_match(h)),
        })
    }
}

fn draw(percent: f64) -> bool {
    percent >= 100.0 || fastrand::f64() * 100.0 < percent
}

/// The faults a request gets from `faults`.
pub fn inject(faults: &[Compiled], headers: &HeaderMap) -> Injected {
    let Some(f) = faults.iter().find(|f| f.applies(headers)) else {
        return Injected::default();
    };
    Injected {
        delay: f.delay.filter(|(_, p)| draw(*p)).map(|(d, _)| d),
        abort: f.abort.filter(|(_, p)| draw(*p)).map(|(a, _)| a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_core::model::traffic::{Abort as AbortSpec, Delay, FaultMatch, HeaderMatch};

    #[test]
    fn the_first_matching_fault_applies() {
        let only_canary = Fault {
            matches: Some(FaultMatch {
                headers: vec![HeaderMatch {
                    kind: HeaderMatchType::RegularExpression,
                    name: "x-user".into(),
                    value: "canary-[0-9]+".into(),
                }],
            }),
            abort: Some(AbortSpec {
                http_status: Some(503),
                grpc_status: None,
                percentage: None,
            }),
            delay: None,
        };
        let everyone = Fault {
            matches: None,
            delay: Some(Delay {
                fixed_delay: "10ms".into(),
                percentage: Some(100.0),
            }),
            abort: None,
        };
        let faults: Vec<_> = [only_canary, everyone]
            .iter()
            .map(|f| Compiled::compile(f).unwrap())
            .collect();
        let mut h = HeaderMap::new();
        h.insert("x-user", "canary-7".parse().unwrap());
        assert_eq!(
            inject(&faults, &h),
            Injected {
                delay: None,
                abort: Some(Abort::Http(StatusCode::SERVICE_UNAVAILABLE))
            }
        );
        h.insert("x-user", "canary-7x".parse().unwrap());
        assert_eq!(inject(&faults, &h).delay, Some(Duration::from_millis(10)));
    }
}
