//! One compiled `HTTPRouteMatch`: what a request must look like to take a rule.

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use weft_core::model::route::{PathMatch, PathMatchType, RouteMatch, ValueMatch, ValueMatchType};

/// The parts of a request a match reads, taken once per request.
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Normalised, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

#[derive(Debug)]
pub enum PathMatcher {
    Exact(String),
    /// Without a trailing `/`; empty matches every path.
    Prefix(String),
    Regex(Regex),
}

impl PathMatcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(p) => path == p,
            // Element-wise, as the spec says: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
            PathMatcher::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathMatcher::Regex(r) => r.is_match(path),
        }
    }
}

#[derive(Debug)]
pub enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

impl ValueMatcher {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatcher::Exact(e) => v == e,
            ValueMatcher::Regex(r) => r.is_match(v),
        }
    }
}

#[derive(Debug)]
pub struct Matcher {
    pub path: PathMatcher,
    pub headers: Vec<(HeaderName, ValueMatcher)>,
    pub query: Vec<(String, ValueMatcher)>,
    pub method: Option<Method>,
}

/// Gateway API regular expressions match the whole value.
fn anchored(re: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{re})$"))
}

fn value(m: &ValueMatch) -> Result<ValueMatcher, regex::Error> {
    Ok(match m.kind {
        ValueMatchType::Exact => ValueMatcher::Exact(m.value.clone()),
        ValueMatchType::RegularExpression => ValueMatcher::Regex(anchored(&m.value)?),
    })
}

/// Why a match could not be compiled; validation refuses these, so only a state built
/// without it gets here.
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    #[error("invalid regular expression: {0}")]
    Regex(#[from] regex::Error),
    #[error("{0:?} is not a header name")]
    Header(String),
    #[error("{0:?} is not a method")]
    Method(String),
}

impl Matcher {
    /// `None` matches every request (a rule without matches).
    pub fn compile(m: Option<&RouteMatch>) -> Result<Self, MatchError> {
        let Some(m) = m else {
            return Ok(Matcher {
                path: PathMatcher::Prefix(String::new()),
                headers: Vec::new(),
                query: Vec::new(),
                method: None,
            });
        };
        let default_path = PathMatch {
            kind: PathMatchType::PathPrefix,
            value: "/".into(),
        };
        let p = m.path.as_ref().unwrap_or(&default_path);
        let path = match p.kind {
            PathMatchType::Exact => PathMatcher::Exact(p.value.clone()),
            PathMatchType::PathPrefix => {
                PathMatcher::Prefix(p.value.trim_end_matches('/').to_owned())
            }
            PathMatchType::RegularExpression => PathMatcher::Regex(anchored(&p.value)?),
        };
        let headers = m
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| MatchError::Header(h.name.clone()))?;
                Ok((name, value(h)?))
            })
            .collect::<Result<_, MatchError>>()?;
        let query = m
            .query_params
            .iter()
            .map(|q| Ok((q.name.clone(), value(q)?)))
            .collect::<Result<_, MatchError>>()?;
        let method = m
            .method
            .as_ref()
            .map(|s| Method::from_bytes(s.as_bytes()).map_err(|_| MatchError::Method(s.clone())))
            .transpose()?;
        Ok(Matcher {
            path,
            headers,
            query,
            method,
        })
    }

    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        if self.method.as_ref().is_some_and(|m| m != r.method) {
            return false;
        }
        if !self.path.matches(r.path) {
            return false;
        }
        let header_ok = |(name, m): &(HeaderName, ValueMatcher)| {
            r.headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| m.matches(v)))
        };
        if !self.headers.iter().all(header_ok) {
            return false;
        }
        // The first occurrence of a parameter is the one matched, as the spec recommends.
        self.query
            .iter()
            .all(|(name, m)| query_value(r.query, name).is_some_and(|v| m.matches(v)))
    }
}

fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        method: &'a Method,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> RequestView<'a> {
        RequestView {
            method,
            path,
            query,
            headers,
        }
    }

    fn yaml(s: &str) -> Matcher {
        let m: RouteMatch = serde_yaml_ng::from_str(s).expect("test match");
        Matcher::compile(Some(&m)).expect("compiles")
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let h = HeaderMap::new();
        let get = Method::GET;
        let m = yaml("path: {type: PathPrefix, value: /foo/}");
        for (p, want) in [
            ("/foo", true),
            ("/foo/", true),
            ("/foo/bar", true),
            ("/foobar", false),
            ("/", false),
        ] {
            assert_eq!(m.matches(&view(&get, p, None, &h)), want, "{p}");
        }
        let all = yaml("path: {type: PathPrefix, value: /}");
        assert!(all.matches(&view(&get, "/anything", None, &h)));
    }

    #[test]
    fn exact_regex_headers_query_and_method() {
        let mut h = HeaderMap::new();
        h.insert("x-version", "v2".parse().expect("value"));
        let (get, post) = (Method::GET, Method::POST);
        let m = yaml(
            "path: {type: RegularExpression, value: '/items/[0-9]+'}\nheaders: [{name: X-Version, value: v2}]\nqueryParams: [{name: debug, type: RegularExpression, value: '1|true'}]\nmethod: GET",
        );
        assert!(m.matches(&view(&get, "/items/42", Some("a=b&debug=true"), &h)));
        assert!(
            !m.matches(&view(&get, "/items/42x", Some("debug=1"), &h)),
            "regex is anchored"
        );
        assert!(!m.matches(&view(&post, "/items/42", Some("debug=1"), &h)));
        assert!(!m.matches(&view(&get, "/items/42", None, &h)));
        assert!(!m.matches(&view(&get, "/items/42", Some("debug=1"), &HeaderMap::new())));
        let exact = yaml("path: {type: Exact, value: /a}");
        assert!(exact.matches(&view(&get, "/a", None, &h)));
        assert!(!exact.matches(&view(&get, "/a/", None, &h)));
    }
}
