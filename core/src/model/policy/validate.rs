//! `AuthorizationPolicy::validate`: every problem in a policy, each with its field path, so
//! that a user fixing a mesh file sees all mistakes in one go.

use super::{
    AuthorizationPolicy, Condition, ConditionKey, Operation, Rule, Scalar, Source, StringPattern,
    ValueError, parse_ip_block, parse_port,
};

impl AuthorizationPolicy {
    /// Everything wrong with the policy, each with a path relative to the policy
    /// (`rules[0].from[1].source.ipBlocks[2]`), so the loader can report all errors at once.
    pub fn validate(&self) -> Vec<ValidationError> {
        let mut v = Validator::default();
        if self.name.is_empty() {
            v.err("name", "must not be empty");
        }
        if self.namespace.is_empty() {
            v.err("namespace", "must not be empty");
        }
        if self.selector.is_some() && !self.target_refs.is_empty() {
            v.err(
                "targetRefs",
                "selector and targetRefs are mutually exclusive",
            );
        }
        for (i, t) in self.target_refs.iter().enumerate() {
            if !TARGET_KINDS.contains(&t.kind.as_str()) {
                let msg = format!(
                    "kind {:?} is not one of {}",
                    t.kind,
                    TARGET_KINDS.join(", ")
                );
                v.err(format!("targetRefs[{i}].kind"), msg);
            }
            if t.name.is_empty() {
                v.err(format!("targetRefs[{i}].name"), "must not be empty");
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            v.rule(&format!("rules[{i}]"), rule);
        }
        v.0
    }
}

/// Kinds Istio accepts in `targetRefs`.
const TARGET_KINDS: &[&str] = &["Service", "ServiceEntry", "Gateway", "GatewayClass"];

/// A problem in one field of a policy. `path` is relative to the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ValidationError {
    pub path: String,
    pub message: String,
}

#[derive(Default)]
struct Validator(Vec<ValidationError>);

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn rule(&mut self, at: &str, rule: &Rule) {
        for (j, f) in rule.from.iter().enumerate() {
            let at = format!("{at}.from[{j}].source");
            match &f.source {
                None => self.err(at, "must be set"),
                Some(s) if s.is_empty() => self.err(at, "must set at least one field"),
                Some(s) => self.source(&at, s),
            }
        }
        for (j, t) in rule.to.iter().enumerate() {
            let at = format!("{at}.to[{j}].operation");
            match &t.operation {
                None => self.err(at, "must be set"),
                Some(o) if o.is_empty() => self.err(at, "must set at least one field"),
                Some(o) => self.operation(&at, o),
            }
        }
        for (j, c) in rule.when.iter().enumerate() {
            self.condition(&format!("{at}.when[{j}]"), c);
        }
    }

    fn source(&mut self, at: &str, s: &Source) {
        let patterns = [
            ("principals", &s.principals),
            ("notPrincipals", &s.not_principals),
            ("namespaces", &s.namespaces),
            ("notNamespaces", &s.not_namespaces),
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
        ];
        for (field, values) in patterns {
            self.each(at, field, values, |v| StringPattern::parse(v).map(drop));
        }
        let ips = [
            ("ipBlocks", &s.ip_blocks),
            ("notIpBlocks", &s.not_ip_blocks),
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ];
        for (field, values) in ips {
            self.each(at, field, values, |v| parse_ip_block(v).map(drop));
        }
    }

    fn operation(&mut self, at: &str, o: &Operation) {
        self.each(at, "ports", &o.ports, |v| parse_port(v.as_str()).map(drop));
        self.each(at, "notPorts", &o.not_ports, |v| {
            parse_port(v.as_str()).map(drop)
        });
        let l7 = [
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
        ];
        for (field, values) in l7 {
            self.each(at, field, values, |v| {
                if v.is_empty() {
                    Err(ValueError::Empty)
                } else {
                    Ok(())
                }
            });
        }
    }

    fn condition(&mut self, at: &str, c: &Condition) {
        let key = match ConditionKey::parse(&c.key) {
            Ok(k) => k,
            Err(e) => return self.err(format!("{at}.key"), e.to_string()),
        };
        if c.values.is_empty() && c.not_values.is_empty() {
            self.err(at, "must set values or notValues");
        }
        let check = |v: &Scalar| -> Result<(), ValueError> {
            match key {
                ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp => {
                    parse_ip_block(v.as_str()).map(drop)
                }
                ConditionKey::DestinationPort => parse_port(v.as_str()).map(drop),
                ConditionKey::SourcePrincipal | ConditionKey::SourceNamespace => {
                    StringPattern::parse(v.as_str()).map(drop)
                }
                ConditionKey::L7 => Ok(()),
            }
        };
        self.each(at, "values", &c.values, check);
        self.each(at, "notValues", &c.not_values, check);
    }

    fn each<T>(
        &mut self,
        at: &str,
        field: &str,
        values: &[T],
        check: impl Fn(&T) -> Result<(), ValueError>,
    ) {
        for (k, value) in values.iter().enumerate() {
            if let Err(e) = check(value) {
                self.err(format!("{at}.{field}[{k}]"), e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AuthorizationPolicy, serde_yaml_ng::Error> {
        serde_yaml_ng::from_str(yaml)
    }

    fn paths(yaml: &str) -> Vec<String> {
        parse(yaml)
            .unwrap()
            .validate()
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn policy_validate_reports_bad_cidr_with_path() {
        let errs = parse(
            r#"{name: a, namespace: b, rules: [{from: [{source: {namespaces: [x]}},
                {source: {ipBlocks: ["10.0.0.0/8", "::1", "10.0.0.0/33"]}}]}]}"#,
        )
        .unwrap()
        .validate();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "rules[0].from[1].source.ipBlocks[2]");
        assert!(errs[0].message.contains("10.0.0.0/33"));
    }

    #[test]
    fn policy_validate_reports_bad_ports_with_path() {
        let got = paths(
            r#"{name: a, namespace: b, rules: [{}, {to: [{operation: {ports: ["80", 0, "x"],
                notPorts: [65536]}}], when: [{key: destination.port, values: ["70000"]}]}]}"#,
        );
        assert_eq!(
            got,
            vec![
                "rules[1].to[0].operation.ports[1]",
                "rules[1].to[0].operation.ports[2]",
                "rules[1].to[0].operation.notPorts[0]",
                "rules[1].when[0].values[0]",
            ]
        );
    }

    #[test]
    fn policy_validate_reports_structure_errors() {
        let got = paths(
            r#"{name: "", namespace: "", selector: {matchLabels: {a: b}},
                targetRefs: [{kind: Pod, name: ""}],
                rules: [{from: [{}, {source: {}}], to: [{operation: {}}],
                  when: [{key: source.ip}, {key: request.bogus, values: [x]},
                         {key: source.ip, values: [nope]}]},
                  {from: [{source: {principals: ["a*b", ""]}}]}]}"#,
        );
        assert_eq!(
            got,
            vec![
                "name",
                "namespace",
                "targetRefs",
                "targetRefs[0].kind",
                "targetRefs[0].name",
                "rules[0].from[0].source",
                "rules[0].from[1].source",
                "rules[0].to[0].operation",
                "rules[0].when[0]",
                "rules[0].when[1].key",
                "rules[0].when[2].values[0]",
                "rules[1].from[0].source.principals[0]",
                "rules[1].from[0].source.principals[1]",
            ]
        );
    }
}
