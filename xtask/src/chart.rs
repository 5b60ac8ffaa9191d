//! Renders the Helm chart (`deploy/charts/weft`) the way `helm template` would, for the
//! committed plain manifests and for the test that every rendered object is a valid Kubernetes
//! object. No helm binary can be installed on these machines, and Helm's template language is
//! Go's text/template, which gtmpl implements; the few Helm functions the chart uses are added
//! here, and a template that calls any other function fails to render.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use gtmpl::{Context as TemplateContext, Template};
use gtmpl_value::{FuncError, Number, Value};

/// The release a rendering is for.
pub struct Release<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
}

/// Renders every template in `chart/templates` (files starting with `_` are helpers, not
/// output) with the chart's `values.yaml`, and returns the YAML documents in file order, each
/// with a `# Source:` line as Helm writes it.
pub fn render(chart: &Path, release: &Release<'_>) -> anyhow::Result<Vec<(String, String)>> {
    let values: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(chart.join("values.yaml")).context("reading values.yaml")?,
    )
    .context("parsing values.yaml")?;
    let meta: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(chart.join("Chart.yaml")).context("reading Chart.yaml")?,
    )
    .context("parsing Chart.yaml")?;
    let context = serde_json::json!({
        "Values": values,
        "Release": {"Name": release.name, "Namespace": release.namespace, "Service": "Helm"},
        "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"]},
    });
    let context = TemplateContext::from(to_value(&context));

    let mut files: Vec<_> = std::fs::read_dir(chart.join("templates"))
        .context("listing templates/")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('_'))
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let name = format!(
            "weft/templates/{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        let text = std::fs::read_to_string(&path)?;
        let mut template = Template::default();
        template.add_funcs(&[
            ("toYaml", to_yaml as gtmpl_value::Func),
            ("nindent", nindent as gtmpl_value::Func),
            ("indent", indent as gtmpl_value::Func),
            ("quote", quote as gtmpl_value::Func),
            ("default", default as gtmpl_value::Func),
        ]);
        template
            .parse(text)
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let rendered = template
            .render(&context)
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        for doc in rendered.split("\n---") {
            if doc.trim().is_empty() {
                continue;
            }
            if doc.contains("<no value>") {
                bail!("{name}: a value the template uses is missing:\n{doc}");
            }
            out.push((name.clone(), doc.trim_matches('\n').to_owned()));
        }
    }
    Ok(out)
}

fn to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Number(Number::from(i)),
            (None, Some(f)) => Value::Number(Number::from(f)),
            _ => Value::Nil,
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(to_value).collect()),
        serde_json::Value::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| (k.clone(), to_value(v)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

fn from_value(v: &Value) -> serde_json::Value {
    match v {
        Value::NoValue | Value::Nil | Value::Function(_) => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => serde_json::json!(i),
            (None, Some(f)) => serde_json::json!(f),
            _ => serde_json::Value::Null,
        },
        Value::Array(a) => serde_json::Value::Array(a.iter().map(from_value).collect()),
        // serde_json's map is sorted, so the YAML is the same on every run.
        Value::Object(o) | Value::Map(o) => {
            serde_json::Value::Object(o.iter().map(|(k, v)| (k.clone(), from_value(v))).collect())
        }
    }
}

fn arg<'a>(args: &'a [Value], i: usize, func: &str) -> Result<&'a Value, FuncError> {
    args.get(i)
        .ok_or_else(|| FuncError::ExactlyXArgs(func.to_owned(), i + 1))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn width(v: &Value, func: &str) -> Result<usize, FuncError> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| FuncError::Generic(format!("{func}: width must be a whole number"))),
        _ => Err(FuncError::Generic(format!(
            "{func}: width must be a number"
        ))),
    }
}

/// `toYaml VALUE`: the value as YAML, without a trailing newline (as Helm's).
fn to_yaml(args: &[Value]) -> Result<Value, FuncError> {
    let v = from_value(arg(args, 0, "toYaml")?);
    let yaml = serde_yaml_ng::to_string(&v).map_err(|e| FuncError::Generic(e.to_string()))?;
    Ok(Value::String(yaml.trim_end_matches('\n').to_owned()))
}

fn indent_lines(s: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    s.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `indent N TEXT`.
fn indent(args: &[Value]) -> Result<Value, FuncError> {
    let n = width(arg(args, 0, "indent")?, "indent")?;
    Ok(Value::String(indent_lines(
        &text(arg(args, 1, "indent")?),
        n,
    )))
}

/// `nindent N TEXT`: a newline, then TEXT indented.
fn nindent(args: &[Value]) -> Result<Value, FuncError> {
    let n = width(arg(args, 0, "nindent")?, "nindent")?;
    Ok(Value::String(format!(
        "\n{}",
        indent_lines(&text(arg(args, 1, "nindent")?), n)
    )))
}

/// `quote VALUE`: a double-quoted YAML string.
fn quote(args: &[Value]) -> Result<Value, FuncError> {
    let s = text(arg(args, 0, "quote")?);
    serde_json::to_string(&s)
        .map(Value::String)
        .map_err(|e| FuncError::Generic(e.to_string()))
}

/// `default FALLBACK VALUE`: VALUE, or FALLBACK when VALUE is empty (Sprig's rule).
fn default(args: &[Value]) -> Result<Value, FuncError> {
    let fallback = arg(args, 0, "default")?;
    let empty = match args.get(1) {
        None | Some(Value::Nil | Value::NoValue) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Bool(b)) => !b,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Map(m) | Value::Object(m)) => m.is_empty(),
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(Value::Function(_)) => false,
    };
    Ok(if empty {
        fallback.clone()
    } else {
        args[1].clone()
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
    use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use serde::de::DeserializeOwned;

    use super::*;

    /// Parses `doc` as `T` and back: a field `T` does not have (a typo, a field in the wrong
    /// place) is lost on the way and makes the two differ.
    fn round_trip<T: DeserializeOwned + serde::Serialize>(
        source: &str,
        doc: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let typed: T = serde_json::from_value(doc.clone())
            .with_context(|| format!("{source}: not a valid {}", doc["kind"]))?;
        let back = serde_json::to_value(&typed)?;
        anyhow::ensure!(
            &back == doc,
            "{source}: {} {} has fields its type does not know:\nrendered: {doc:#}\nparsed:   {back:#}",
            doc["kind"],
            doc["metadata"]["name"]
        );
        Ok(())
    }

    #[test]
    fn every_rendered_object_is_a_valid_kubernetes_object() {
        let chart = crate::workspace_root().join("deploy/charts/weft");
        let docs = render(
            &chart,
            &Release {
                name: "weft",
                namespace: "mesh-system",
            },
        )
        .unwrap();
        let mut kinds = Vec::new();
        for (source, text) in &docs {
            let doc: serde_json::Value = serde_yaml_ng::from_str(text)
                .unwrap_or_else(|e| panic!("{source}: not YAML: {e}\n{text}"));
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "ServiceAccount" => round_trip::<ServiceAccount>(source, &doc),
                "ClusterRole" => round_trip::<ClusterRole>(source, &doc),
                "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(source, &doc),
                "Role" => round_trip::<Role>(source, &doc),
                "RoleBinding" => round_trip::<RoleBinding>(source, &doc),
                "ConfigMap" => round_trip::<ConfigMap>(source, &doc),
                "DaemonSet" => round_trip::<DaemonSet>(source, &doc),
                "Deployment" => round_trip::<Deployment>(source, &doc),
                "Service" => round_trip::<Service>(source, &doc),
                other => panic!("{source}: a {other:?} the test does not know how to check"),
            }
            .unwrap();
            assert_eq!(
                doc["metadata"]["namespace"].as_str().is_some(),
                !kind.starts_with("Cluster"),
                "{source}: {kind} namespaced as it should be"
            );
            if let Some(ns) = doc["metadata"]["namespace"].as_str() {
                assert_eq!(ns, "mesh-system", "{source}: the release namespace");
            }
            kinds.push(kind);
        }
        for want in [
            "DaemonSet",
            "Deployment",
            "Service",
            "ConfigMap",
            "ClusterRole",
        ] {
            assert!(kinds.iter().any(|k| k == want), "no {want} rendered");
        }

        // The mesh file in the ConfigMap is one weftd accepts, and every node gets eBPF
        // capture redirected to its own IP.
        let (_, config) = docs
            .iter()
            .find(|(_, d)| d.contains("name: weft-mesh"))
            .unwrap();
        let config: ConfigMap = serde_yaml_ng::from_str(config).unwrap();
        let mesh = &config.data.unwrap()["mesh.yaml"];
        let loaded = weft_core::config::load_str(mesh, "weft-mesh/mesh.yaml", Path::new("/"))
            .unwrap_or_else(|e| panic!("{e}\n{mesh}"));
        let node = loaded.node("any-node");
        assert_eq!(node.capture, weft_core::config::CaptureKind::Ebpf);
        assert!(node.ebpf.unwrap().redirect_address.is_unspecified());
        assert!(loaded.ca.is_none(), "certificates come from the controller");
    }

    #[test]
    fn unknown_functions_and_missing_values_fail_the_render() {
        let dir = tempfile::tempdir().unwrap();
        let chart = crate::workspace_root().join("deploy/charts/weft");
        std::fs::copy(chart.join("Chart.yaml"), dir.path().join("Chart.yaml")).unwrap();
        std::fs::copy(chart.join("values.yaml"), dir.path().join("values.yaml")).unwrap();
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        let release = Release {
            name: "weft",
            namespace: "weft",
        };
        let t = dir.path().join("templates/t.yaml");
        std::fs::write(&t, "a: {{ .Values.no.such.value }}\n").unwrap();
        let err = render(dir.path(), &release).unwrap_err().to_string();
        assert!(err.contains("t.yaml"), "{err}");
        std::fs::write(&t, "a: {{ b64enc .Values.logLevel }}\n").unwrap();
        let err = render(dir.path(), &release).unwrap_err().to_string();
        assert!(err.contains("t.yaml"), "{err}");
    }
}
