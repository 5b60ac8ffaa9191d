//! A fake Kubernetes API server at the HTTP boundary: a `tower` service to put under
//! `kube::Client` in tests. It keeps objects as JSON by resource (plural), answers lists
//! (with `fieldSelector` equality on dotted paths) and streaming watches from a
//! resourceVersion, and lets a test compact its history (watches from before get `410 Gone`),
//! drop every open watch, take the whole server down, and answer other requests (a
//! `TokenReview`) with a handler.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use serde_json::{Value, json};
use tokio::sync::mpsc;

mod rbac;
pub use rbac::{Access, Grants};

type Body = BoxBody<Bytes, std::io::Error>;

/// Answers a request the fake does not serve itself: `(method, path, body)`.
pub type Handler = Box<dyn Fn(&Method, &str, &[u8]) -> Option<(StatusCode, Value)> + Send>;

struct Watch {
    resource: String,
    selector: Vec<(String, String)>,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// resource -> (namespace/name) -> object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// Every change: (resourceVersion, resource, event type, object).
    history: Vec<(u64, String, &'static str, Value)>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    watches: Vec<Watch>,
    down: bool,
    /// resource -> lists served.
    lists: BTreeMap<String, u64>,
    /// resource -> patches applied.
    patches: BTreeMap<String, u64>,
    handler: Option<Handler>,
    /// Every request served, in RBAC's terms.
    asked: Vec<Access>,
}

/// The fake; clones share one server.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

/// The resource (plural) an object's kind is served as.
fn resource_of(kind: &str) -> String {
    match kind {
        "EndpointSlice" => "endpointslices".into(),
        "AuthorizationPolicy" => "authorizationpolicies".into(),
        "ServiceAccount" => "serviceaccounts".into(),
        k => format!("{}s", k.to_ascii_lowercase()),
    }
}

fn key_of(o: &Value) -> String {
    let m = &o["metadata"];
    format!(
        "{}/{}",
        m["namespace"].as_str().unwrap_or(""),
        m["name"].as_str().unwrap_or("")
    )
}

fn matches(o: &Value, selector: &[(String, String)]) -> bool {
    selector.iter().all(|(path, want)| {
        let got = path.split('.').fold(o, |v, k| &v[k]);
        got.as_str() == Some(want)
    })
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let mut r = Response::new(
        http_body_util::Full::new(bytes)
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// RFC 7386: objects merge key by key, `null` deletes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn not_found(resource: &str, key: &str) -> Response<Body> {
    full(
        StatusCode::NOT_FOUND,
        status_body(404, "NotFound", &format!("{resource} {key} not found")),
    )
}

pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl FakeApi {
    /// Creates or replaces `object` (its kind decides the resource), as a client's apply would.
    pub fn apply(&self, mut object: Value) -> Value {
        let mut s = self.lock();
        s.rv += 1;
        object["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        let resource = resource_of(object["kind"].as_str().unwrap_or(""));
        let key = key_of(&object);
        let existed = s
            .objects
            .entry(resource.clone())
            .or_default()
            .insert(key, object.clone())
            .is_some();
        let kind = if existed { "MODIFIED" } else { "ADDED" };
        s.publish(&resource, kind, object.clone());
        object
    }

    /// The object of `kind` at `namespace/name`, as stored.
    pub fn get(&self, kind: &str, key: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&resource_of(kind))
            .and_then(|m| m.get(key))
            .cloned()
    }

    /// Deletes the object of `kind` at `namespace/name` (`/name` for cluster-scoped ones).
    pub fn delete(&self, kind: &str, key: &str) {
        let mut s = self.lock();
        let resource = resource_of(kind);
        let Some(mut object) = s.objects.get_mut(&resource).and_then(|m| m.remove(key)) else {
            return;
        };
        s.rv += 1;
        object["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        s.publish(&resource, "DELETED", object);
    }

    /// Forgets the history: a watch resumed from any version before the current one gets
    /// 410 Gone.
    pub fn compact(&self) {
        let mut s = self.lock();
        s.compacted = s.rv;
        s.history.clear();
    }

    /// Ends every open watch stream, as an API server restart or a load balancer would.
    pub fn drop_watches(&self) {
        self.lock().watches.clear();
    }

    /// Down: every request fails to connect and open watches end. Up: served again.
    pub fn set_down(&self, down: bool) {
        let mut s = self.lock();
        s.down = down;
        if down {
            s.watches.clear();
        }
    }

    /// Lists served for `resource` (plural) so far.
    pub fn lists(&self, resource: &str) -> u64 {
        self.lock().lists.get(resource).copied().unwrap_or(0)
    }

    /// Patches applied to `resource` (plural) so far.
    pub fn patches(&self, resource: &str) -> u64 {
        self.lock().patches.get(resource).copied().unwrap_or(0)
    }

    /// Open watch streams on `resource`.
    pub fn watching(&self, resource: &str) -> usize {
        let mut s = self.lock();
        s.watches.retain(|w| !w.tx.is_closed());
        s.watches.iter().filter(|w| w.resource == resource).count()
    }

    pub fn set_handler(&self, handler: Handler) {
        self.lock().handler = Some(handler);
    }

    /// Every request served so far, in RBAC's terms (for [`Grants::refused`]).
    pub fn asked(&self) -> Vec<Access> {
        self.lock().asked.clone()
    }

    /// The requests that came with bearer token `token`.
    pub fn asked_by(&self, token: &str) -> Vec<Access> {
        let mut asked = self.asked();
        asked.retain(|a| a.token.as_deref() == Some(token));
        asked
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn serve(
        &self,
        req: Request<kube::client::Body>,
    ) -> Result<Response<Body>, std::io::Error> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let path = parts.uri.path().to_string();
        let query: BTreeMap<String, String> = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.replace("%3D", "=").replace("%2C", ",")))
            .collect();
        let mut s = self.lock();
        if s.down {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "fake API server is down",
            ));
        }
        // `/api/v1/namespaces/shop/pods[/name]` is one namespace; `/api/v1/pods` all of them;
        // `/api/v1/namespaces[/name]` the namespaces themselves.
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, rest) = match segments.first() {
            Some(&"api") => ("", segments.get(2..).unwrap_or(&[])),
            _ => (
                segments.get(1).copied().unwrap_or(""),
                segments.get(3..).unwrap_or(&[]),
            ),
        };
        let (namespace, resource, name, subresource) = match rest {
            ["namespaces", ns, resource, tail @ ..] => (
                Some(ns.to_string()),
                resource.to_string(),
                tail.first(),
                tail.get(1),
            ),
            [resource, tail @ ..] => (None, resource.to_string(), tail.first(), tail.get(1)),
            [] => (None, String::new(), None, None),
        };
        let watch = query.get("watch").map(String::as_str) == Some("true");
        s.asked.push(Access {
            verb: match (&parts.method, name) {
                (&Method::GET, Some(_)) => "get",
                (&Method::GET, None) if watch => "watch",
                (&Method::GET, None) => "list",
                (&Method::POST, _) => "create",
                (&Method::PUT, _) => "update",
                (&Method::PATCH, _) => "patch",
                (&Method::DELETE, _) => "delete",
                _ => "other",
            },
            group: group.to_owned(),
            resource: match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.clone(),
            },
            namespace: namespace.clone(),
            name: name.map(|n| n.to_string()),
            token: parts
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned),
        });
        if let Some(h) = &s.handler
            && let Some((status, value)) = h(&parts.method, &path, &body)
        {
            return Ok(full(status, value));
        }
        let key = format!(
            "{}/{}",
            namespace.as_deref().unwrap_or(""),
            name.unwrap_or(&"")
        );
        match (&parts.method, name) {
            (&Method::GET, Some(_)) => {
                return Ok(match s.objects.get(&resource).and_then(|m| m.get(&key)) {
                    Some(o) => full(StatusCode::OK, o.clone()),
                    None => not_found(&resource, &key),
                });
            }
            (&Method::GET, None) => {}
            (&Method::POST, None) => {
                let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                    return Ok(full(
                        StatusCode::BAD_REQUEST,
                        status_body(400, "BadRequest", "the body is not JSON"),
                    ));
                };
                let mut object = object;
                if let Some(ns) = &namespace {
                    object["metadata"]["namespace"] = json!(ns);
                }
                let key = key_of(&object);
                if s.objects
                    .get(&resource)
                    .is_some_and(|m| m.contains_key(&key))
                {
                    return Ok(full(
                        StatusCode::CONFLICT,
                        status_body(
                            409,
                            "AlreadyExists",
                            &format!("{resource} {key} already exists"),
                        ),
                    ));
                }
                drop(s);
                return Ok(full(StatusCode::CREATED, self.apply(object)));
            }
            (&Method::PUT, Some(_)) => {
                let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                    return Ok(full(
                        StatusCode::BAD_REQUEST,
                        status_body(400, "BadRequest", "the body is not JSON"),
                    ));
                };
                if !s
                    .objects
                    .get(&resource)
                    .is_some_and(|m| m.contains_key(&key))
                {
                    return Ok(not_found(&resource, &key));
                }
                drop(s);
                return Ok(full(StatusCode::OK, self.apply(object)));
            }
            // A JSON merge patch (RFC 7386), of the object or its status subresource.
            (&Method::PATCH, Some(_)) => {
                let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                    return Ok(full(
                        StatusCode::BAD_REQUEST,
                        status_body(400, "BadRequest", "the body is not JSON"),
                    ));
                };
                let Some(mut object) = s.objects.get(&resource).and_then(|m| m.get(&key)).cloned()
                else {
                    return Ok(not_found(&resource, &key));
                };
                merge(&mut object, &patch);
                *s.patches.entry(resource.clone()).or_default() += 1;
                drop(s);
                return Ok(full(StatusCode::OK, self.apply(object)));
            }
            _ => {
                return Ok(full(
                    StatusCode::METHOD_NOT_ALLOWED,
                    status_body(
                        405,
                        "MethodNotAllowed",
                        "the fake serves get, list, watch, create, replace and merge patch",
                    ),
                ));
            }
        }
        let selector: Vec<(String, String)> = query
            .get("fieldSelector")
            .map(|f| {
                f.split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let mut selector = selector;
        if let Some(ns) = namespace {
            selector.push(("metadata.namespace".into(), ns));
        }
        if query.get("watch").map(String::as_str) == Some("true") {
            let from: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (tx, rx) = mpsc::unbounded_channel();
            if from != 0 && from < s.compacted {
                let _ = tx.send(event_line(
                    "ERROR",
                    &status_body(410, "Expired", "too old resource version"),
                ));
            } else {
                for (rv, r, kind, o) in &s.history {
                    if *rv > from && *r == resource && matches(o, &selector) {
                        let _ = tx.send(event_line(kind, o));
                    }
                }
                s.watches.push(Watch {
                    resource,
                    selector,
                    tx,
                });
            }
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok(http_body::Frame::data(b)), rx))
            });
            let mut r = Response::new(http_body_util::StreamBody::new(Box::pin(stream)).boxed());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return Ok(r);
        }
        *s.lists.entry(resource.clone()).or_default() += 1;
        let items: Vec<Value> = s
            .objects
            .get(&resource)
            .map(|m| {
                m.values()
                    .filter(|o| matches(o, &selector))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        Ok(full(
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "List",
                   "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
        ))
    }
}

/// The fake as the HTTP service `kube::Client` sends requests to.
impl tower::Service<Request<kube::client::Body>> for FakeApi {
    type Response = Response<Body>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Body>, std::io::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<kube::client::Body>) -> Self::Future {
        let api = self.clone();
        Box::pin(async move { api.serve(req).await })
    }
}

impl State {
    fn publish(&mut self, resource: &str, kind: &'static str, object: Value) {
        self.watches.retain(|w| {
            w.resource != resource
                || !matches(&object, &w.selector)
                || w.tx.send(event_line(kind, &object)).is_ok()
        });
        self.history
            .push((self.rv, resource.to_string(), kind, object));
    }
}
