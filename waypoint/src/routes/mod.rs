//! The routes a waypoint applies, compiled once per mesh version: for each Service bound to
//! it, every (route, rule, match) in Gateway API precedence order, so a request takes the
//! first entry that matches.
//!
//! Precedence, as the spec gives it across all routes attached to one Service: an Exact path
//! first, then a longer PathPrefix before a shorter one, then a match with a method, then the
//! one with more header matches, then more query matches; remaining ties go to the oldest
//! route, then the route first by `namespace/name`, then the first rule and match in the
//! route. RegularExpression paths are implementation-specific: weft puts them after Exact
//! and before any PathPrefix, so a catch-all `/` never hides one.

mod matcher;
mod rule;

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use tower::retry::budget::TpsBudget;
use weft_core::model::MeshState;
use weft_core::model::route::PathMatchType;

pub use matcher::RequestView;
pub use rule::{BackendTarget, Rule};

use matcher::Matcher;

struct Entry {
    /// The parentRef's port, when it names one.
    port: Option<u16>,
    matcher: Matcher,
    rule: Arc<Rule>,
    /// The PathPrefix matched, for `ReplacePrefixMatch`.
    prefix: Option<String>,
    describe: String,
}

/// The rule a request takes, and the path prefix that selected it.
pub struct Selection<'a> {
    pub rule: &'a Arc<Rule>,
    pub prefix: Option<&'a str>,
}

/// The routes of one Service.
pub struct ServiceRoutes {
    entries: Vec<Entry>,
}

impl ServiceRoutes {
    /// The rule for a request to `port`; `None` is Gateway API's 404: routes are attached
    /// and none matches.
    pub fn select(&self, port: u16, r: &RequestView<'_>) -> Option<Selection<'_>> {
        self.entries
            .iter()
            .filter(|e| e.port.is_none_or(|p| p == port))
            .find(|e| e.matcher.matches(r))
            .map(|e| Selection {
                rule: &e.rule,
                prefix: e.prefix.as_deref(),
            })
    }

    /// Whether any route applies to `port` at all (else the port keeps its default backend).
    pub fn covers(&self, port: u16) -> bool {
        self.entries
            .iter()
            .any(|e| e.port.is_none_or(|p| p == port))
    }
}

/// Whose retry budget: (Service `namespace/name`, the parentRef's port, route, rule index).
type BudgetKey = (String, Option<u16>, String, usize);

#[derive(Default)]
pub struct RouteTable {
    /// namespace -> service name -> routes, looked up by `&str` per request.
    services: HashMap<String, HashMap<String, ServiceRoutes>>,
    /// The retry budgets of the rules with a retry policy, for the next build to keep.
    budgets: HashMap<BudgetKey, Arc<TpsBudget>>,
}

/// Sort key of one entry; smaller is tried first.
type Precedence = (
    u8,
    Reverse<usize>,
    bool,
    Reverse<usize>,
    Reverse<usize>,
    // (undated, creation time): routes without a creation time (mesh files) after dated ones.
    (bool, Option<String>),
    String,
    usize,
    usize,
);

impl RouteTable {
    /// The routes of every Service bound to waypoint `name` in `namespace`. A rule that was
    /// in `previous` keeps its retry budget: the mesh changes with every endpoint that comes
    /// and goes, and a budget that started afresh each time would cap nothing.
    pub fn build(state: &MeshState, name: &str, namespace: &str, previous: &RouteTable) -> Self {
        let mut services: HashMap<String, HashMap<String, ServiceRoutes>> = HashMap::new();
        let mut budgets: HashMap<BudgetKey, Arc<TpsBudget>> = HashMap::new();
        for s in state
            .services
            .iter()
            .filter(|s| s.namespace == namespace && s.waypoint.as_deref() == Some(name))
        {
            let mut keyed: Vec<(Precedence, Entry)> = Vec::new();
            for route in state.routes_for(&s.namespace, &s.name) {
                let key = route.key();
                // A route naming the Service twice (two ports) is compiled for each port.
                let ports: Vec<Option<u16>> = route
                    .service_parents()
                    .filter(|(ns, n, _)| *ns == s.namespace && *n == s.name)
                    .map(|(_, _, p)| p)
                    .collect();
                for port in ports {
                    let default_port = port.or(s.ports.first().map(|p| p.port)).unwrap_or(80);
                    for (ri, r) in route.rules.iter().enumerate() {
                        let budget_key =
                            (format!("{}/{}", s.namespace, s.name), port, key.clone(), ri);
                        let budget = || {
                            let b = previous
                                .budgets
                                .get(&budget_key)
                                .cloned()
                                .unwrap_or_else(rule::new_budget);
                            budgets.insert(budget_key.clone(), b.clone());
                            b
                        };
                        let rule = Rule::compile(
                            key.clone(),
                            route.kind,
                            &route.namespace,
                            ri,
                            r,
                            default_port,
                            budget,
                        );
                        let matches: Vec<_> = if r.matches.is_empty() {
                            vec![None]
                        } else {
                            r.matches.iter().map(Some).collect()
                        };
                        for (mi, m) in matches.into_iter().enumerate() {
                            let matcher = match Matcher::compile(m) {
                                Ok(c) => c,
                                Err(e) => {
                                    tracing::error!(route = %key, rule = ri, "match {mi} left out: {e}");
                                    continue;
                                }
                            };
                            let path = m.and_then(|m| m.path.as_ref());
                            let rank = match path.map(|p| p.kind) {
                                Some(PathMatchType::Exact) => 0,
                                Some(PathMatchType::RegularExpression) => 1,
                                _ => 2,
                            };
                            let len = path
                                .filter(|p| p.kind != PathMatchType::RegularExpression)
                                .map_or(0, |p| p.value.trim_end_matches('/').len());
                            let precedence = (
                                rank,
                                Reverse(len),
                                m.is_none_or(|m| m.method.is_none()),
                                Reverse(m.map_or(0, |m| m.headers.len())),
                                Reverse(m.map_or(0, |m| m.query_params.len())),
                                (route.created.is_none(), route.created.clone()),
                                key.clone(),
                                ri,
                                mi,
                            );
                            let prefix = match path {
                                Some(p) if p.kind == PathMatchType::PathPrefix => {
                                    Some(p.value.trim_end_matches('/').to_owned())
                                }
                                None => Some(String::new()),
                                _ => None,
                            };
                            let describe = m
                                .and_then(|m| serde_json::to_string(m).ok())
                                .unwrap_or_else(|| "{}".into());
                            keyed.push((
                                precedence,
                                Entry {
                                    port,
                                    matcher,
                                    rule: rule.clone(),
                                    prefix,
                                    describe,
                                },
                            ));
                        }
                    }
                }
            }
            if keyed.is_empty() {
                continue;
            }
            keyed.sort_by(|(a, _), (b, _)| a.cmp(b));
            services.entry(s.namespace.clone()).or_default().insert(
                s.name.clone(),
                ServiceRoutes {
                    entries: keyed.into_iter().map(|(_, e)| e).collect(),
                },
            );
        }
        RouteTable { services, budgets }
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServiceRoutes> {
        self.services.get(namespace)?.get(name)
    }

    /// What `/config_dump` shows: per Service, the entries in the order they are tried.
    pub fn dump(&self) -> Vec<ServiceDump> {
        let mut out: Vec<ServiceDump> = self
            .services
            .iter()
            .flat_map(|(ns, m)| m.iter().map(move |(name, r)| (ns, name, r)))
            .map(|(ns, name, r)| ServiceDump {
                service: format!("{ns}/{name}"),
                entries: r
                    .entries
                    .iter()
                    .map(|e| EntryDump {
                        port: e.port,
                        matches: e.describe.clone(),
                        rule: e.rule.dump(),
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.service.cmp(&b.service));
        out
    }
}

#[derive(Serialize)]
pub struct ServiceDump {
    service: String,
    entries: Vec<EntryDump>,
}

#[derive(Serialize)]
pub struct EntryDump {
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    matches: String,
    rule: rule::RuleDump,
}

#[cfg(test)]
mod tests {
    use tower::retry::budget::Budget;

    use super::*;

    fn state(routes: &str) -> MeshState {
        let text = format!(
            "services:
  - name: web
    namespace: shop
    vips: [10.96.0.10]
    ports: [{{port: 80}}]
    waypoint: wp
{routes}"
        );
        weft_core::config::load_str(&text, "mesh.yaml", std::path::Path::new("/"))
            .unwrap_or_else(|e| panic!("{e}"))
            .state
    }

    const RETRIED: &str = "routes:
  - name: web
    namespace: shop
    parentRefs: [{kind: Service, name: web}]
    rules:
      - backendRefs: [{name: web, port: 80}]
        retry: {codes: [503], attempts: 2}
";

    fn budget(t: &RouteTable) -> Option<Arc<TpsBudget>> {
        t.budgets
            .get(&("shop/web".to_owned(), None, "shop/web".to_owned(), 0))
            .cloned()
    }

    /// The mesh changes with every endpoint; a budget spent under a failing backend must stay
    /// spent across those rebuilds, or it caps nothing.
    #[test]
    fn a_rebuilt_table_keeps_the_retry_budgets_of_its_rules() {
        let first = RouteTable::build(&state(RETRIED), "wp", "shop", &RouteTable::default());
        let spent = budget(&first).expect("the retried rule has a budget");
        let mut withdrawn = 0;
        while spent.withdraw() {
            withdrawn += 1;
            assert!(withdrawn < 10_000, "the budget never runs out");
        }
        let second = RouteTable::build(&state(RETRIED), "wp", "shop", &first);
        let kept = budget(&second).expect("still there");
        assert!(Arc::ptr_eq(&spent, &kept));
        assert!(!kept.withdraw(), "still spent after the rebuild");
        let entry = &second.service("shop", "web").unwrap().entries[0];
        assert!(Arc::ptr_eq(
            &entry.rule.retry.as_ref().unwrap().budget,
            &kept
        ));

        // A route gone takes its budget with it; one without retries has none.
        let third = RouteTable::build(&state(""), "wp", "shop", &second);
        assert!(third.budgets.is_empty());
        let plain = RETRIED.replace("        retry: {codes: [503], attempts: 2}\n", "");
        let fourth = RouteTable::build(&state(&plain), "wp", "shop", &second);
        assert!(budget(&fourth).is_none());
    }
}
