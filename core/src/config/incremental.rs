//! Reloading a large mesh file without parsing all of it again.
//!
//! YAML parsing is most of a reload (about 80% of the instructions for 10 000 workloads), and an
//! edit usually changes a few list items. The file is cut into the items of its `workloads`,
//! `services` and `policies` lists and the rest (the skeleton); an item whose text is the same
//! as at the last load is taken from that load instead of being parsed again.
//!
//! Anything this cut cannot be sure of makes it give up, and the caller parses the whole file:
//! directives or several documents, tabs in indentation, an item that does not parse on its own
//! (an alias to an anchor in another item, say), a skeleton that does not parse. A file that
//! does not parse whole gets its error (with its path) from the whole parse, so errors read the
//! same either way.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use serde::de::DeserializeOwned;

use super::meshfile::{MeshFile, ServiceFile, WorkloadFile};
use crate::model::policy::AuthorizationPolicy;

/// Items by their exact text. SipHash over every item's text was a tenth of a reload;
/// foldhash is several times faster, and the keys come from the operator's own file.
type Items<T> = HashMap<Box<str>, T, RandomState>;

/// The items of the last load, by their exact text.
#[derive(Default)]
pub struct ItemCache {
    workloads: Items<WorkloadFile>,
    services: Items<ServiceFile>,
    policies: Items<AuthorizationPolicy>,
}

/// What one parse reused and parsed, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reuse {
    pub reused: usize,
    pub parsed: usize,
}

const LISTS: [&str; 3] = ["workloads", "services", "policies"];

/// The list being cut.
struct OpenList<'a> {
    /// Index into [`LISTS`].
    list: usize,
    /// Its header line as written.
    header: &'a str,
    /// The indentation of its dashes, once its first item is seen.
    dash: Option<usize>,
    /// The byte where its current item starts.
    item: Option<usize>,
}

/// `text` cut into the skeleton (each list replaced by `[]`) and the items of each list.
struct Cut<'a> {
    skeleton: String,
    items: [Vec<&'a str>; 3],
}

/// Parses `text` as the whole-file parse would, reusing items of the previous call and keeping
/// this call's items for the next. `None`: the caller must parse the file whole (the cache is
/// then emptied, as it no longer matches the file).
pub fn parse(text: &str, cache: &mut ItemCache) -> Option<(MeshFile, Reuse)> {
    let result = cut(text).and_then(|cut| {
        let mut mesh: MeshFile = serde_yaml_ng::from_str(&cut.skeleton).ok()?;
        let [w, s, p] = &cut.items;
        let mut reuse = Reuse::default();
        let mut next = ItemCache::default();
        mesh.workloads = items(w, &mut cache.workloads, &mut next.workloads, &mut reuse)?;
        mesh.services = items(s, &mut cache.services, &mut next.services, &mut reuse)?;
        mesh.policies = items(p, &mut cache.policies, &mut next.policies, &mut reuse)?;
        Some((mesh, reuse, next))
    });
    match result {
        Some((mesh, reuse, next)) => {
            *cache = next;
            Some((mesh, reuse))
        }
        None => {
            *cache = ItemCache::default();
            None
        }
    }
}

/// The parsed items, in order: from `old` when the text is unchanged, parsed otherwise; each
/// lands in `next` under its text.
fn items<T: DeserializeOwned + Clone>(
    texts: &[&str],
    old: &mut Items<T>,
    next: &mut Items<T>,
    reuse: &mut Reuse,
) -> Option<Vec<T>> {
    let mut out = Vec::with_capacity(texts.len());
    next.reserve(texts.len());
    for text in texts {
        let item = match old.remove(*text).or_else(|| next.get(*text).cloned()) {
            Some(item) => {
                reuse.reused += 1;
                item
            }
            None => {
                reuse.parsed += 1;
                let mut one: Vec<T> = serde_yaml_ng::from_str(text).ok()?;
                if one.len() != 1 {
                    return None;
                }
                one.pop()?
            }
        };
        out.push(item.clone());
        next.insert((*text).into(), item);
    }
    Some(out)
}

/// Cuts `text` into skeleton and list items; `None` where the file's shape is beyond this cut.
fn cut(text: &str) -> Option<Cut<'_>> {
    let mut skeleton = String::new();
    let mut items: [Vec<&str>; 3] = Default::default();
    let mut open: Option<OpenList> = None;
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += line.len();
        let body = line.trim_end_matches(['\n', '\r']);
        if body.starts_with('%')
            || (body.starts_with("---") && n > 0)
            || body.starts_with("...")
            || body.starts_with('\t')
        {
            return None;
        }
        let blank = body.trim().is_empty() || body.trim_start().starts_with('#');
        if let Some(o) = &mut open {
            if blank {
                continue;
            }
            let indent = body.len() - body.trim_start_matches(' ').len();
            let rest = &body[indent..];
            if rest.starts_with('\t') {
                return None;
            }
            let is_dash = rest == "-" || rest.starts_with("- ");
            if indent == 0 && !is_dash {
                // The list ended at the previous item; this line is outside it.
                if let Some(from) = o.item.take() {
                    items[o.list].push(&text[from..start]);
                }
                close(&mut skeleton, o.list, o.header, !items[o.list].is_empty());
                open = None;
            } else {
                match o.dash {
                    None if is_dash => o.dash = Some(indent),
                    None => return None,
                    Some(d) if indent < d => return None,
                    Some(d) if indent == d && !is_dash => return None,
                    Some(_) => {}
                }
                if o.dash == Some(indent)
                    && let Some(from) = o.item.replace(start)
                {
                    items[o.list].push(&text[from..start]);
                }
                continue;
            }
        }
        let key = body.split('#').next().unwrap_or("").trim_end();
        match LISTS.iter().position(|l| key.strip_suffix(':') == Some(l)) {
            Some(list) => {
                open = Some(OpenList {
                    list,
                    header: line,
                    dash: None,
                    item: None,
                })
            }
            None => skeleton.push_str(line),
        }
        if !line.ends_with('\n') && open.is_none() {
            skeleton.push('\n');
        }
    }
    if let Some(o) = open {
        if let Some(from) = o.item {
            items[o.list].push(&text[from..]);
        }
        close(&mut skeleton, o.list, o.header, !items[o.list].is_empty());
    }
    Some(Cut { skeleton, items })
}

/// Ends a cut list in the skeleton: `[]` stands for its items. A list with no items keeps its
/// header as written (an empty value is not an empty list, and the whole parse says so).
fn close(skeleton: &mut String, list: usize, header: &str, had_items: bool) {
    if had_items {
        skeleton.push_str(LISTS[list]);
        skeleton.push_str(": []\n");
    } else {
        skeleton.push_str(header.trim_end_matches(['\n', '\r']));
        skeleton.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = "\
trustDomain: example.org
workloads:
  - name: a
    namespace: default
    serviceAccount: a
    ips: [10.0.0.1]
    node: n1

  # a comment between items
  - {name: b, namespace: default, serviceAccount: b, ips: [10.0.0.2], node: n1}
services:
- name: s
  namespace: default
  vips: [10.96.0.1]
  ports: [{port: 80, targetPort: 8080}]
  selector: {app: a}
nodes:
  - {name: n1}
";

    fn whole(text: &str) -> MeshFile {
        match serde_yaml_ng::from_str(text) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }

    /// Same parse as the whole file, compared through Debug (the file types have no PartialEq).
    fn same(a: &MeshFile, b: &MeshFile) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn a_cut_parse_equals_the_whole_parse_and_reuses_unchanged_items() {
        let mut cache = ItemCache::default();
        let Some((first, reuse)) = parse(MESH, &mut cache) else {
            panic!("the cut gave up on a plain file")
        };
        assert!(same(&first, &whole(MESH)));
        assert_eq!(first.workloads.len(), 2);
        assert_eq!(
            first.nodes.len(),
            1,
            "a key after a list stays in the skeleton"
        );
        assert_eq!(
            reuse,
            Reuse {
                reused: 0,
                parsed: 3
            }
        );

        let edited = MESH.replace("ips: [10.0.0.2]", "ips: [10.0.0.3]");
        let Some((second, reuse)) = parse(&edited, &mut cache) else {
            panic!("the cut gave up on an edited file")
        };
        assert!(same(&second, &whole(&edited)));
        assert_eq!(
            reuse,
            Reuse {
                reused: 2,
                parsed: 1
            }
        );
    }

    #[test]
    fn shapes_beyond_the_cut_fall_back_to_the_whole_parse() {
        let mut cache = ItemCache::default();
        for text in [
            format!("%YAML 1.2\n---\n{MESH}"),
            format!("{MESH}---\n{MESH}"),
            MESH.replace("    node: n1\n", "\tnode: n1\n"),
            // An alias to an anchor in another item does not parse on its own.
            MESH.replace("serviceAccount: a\n", "serviceAccount: &sa a\n")
                .replace("serviceAccount: b,", "serviceAccount: *sa,"),
        ] {
            assert!(parse(&text, &mut cache).is_none(), "{text}");
        }
    }

    #[test]
    fn an_empty_list_value_reads_as_the_whole_parse_reads_it() {
        let text = "workloads:\nservices: []\n";
        let mut cache = ItemCache::default();
        let cut = parse(text, &mut cache).map(|(m, _)| format!("{m:?}"));
        let full = serde_yaml_ng::from_str::<MeshFile>(text).map(|m| format!("{m:?}"));
        assert_eq!(cut, full.ok());
    }

    #[test]
    fn the_example_and_a_generated_mesh_cut_as_they_parse_whole() {
        let example = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh.yaml"),
        )
        .unwrap_or_default();
        assert!(!example.is_empty());
        let generated = super::super::synthetic::mesh_sections(super::super::synthetic::Size {
            workloads: 300,
            services: 30,
            policies: 30,
        });
        for text in [example, generated] {
            let mut cache = ItemCache::default();
            let Some((cut, _)) = parse(&text, &mut cache) else {
                panic!("the cut gave up on:\n{text}")
            };
            assert!(same(&cut, &whole(&text)));
        }
    }
}
