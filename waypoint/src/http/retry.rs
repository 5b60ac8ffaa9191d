//! Retries, as a rule's `retry` says: on its status codes and on connection failures, with
//! exponential backoff and full jitter, within the rule's retry budget. Only a request whose
//! body the waypoint holds a copy of is retried: an empty body, or a declared size within the
//! retry buffer. Anything larger streams through once and is never sent twice.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use tower::Layer;
use tower::retry::budget::Budget;

use super::body::{self, Body};
use super::exchange::{Exchange, Flag};
use super::filters::Selected;
use super::{HttpService, layer_fn};

/// The most of a request body held for retries.
pub const RETRY_BUFFER: u64 = 64 * 1024;

/// The backend could not be reached: marks a response the backend layer made itself, so it
/// is retried whatever the codes say.
#[derive(Debug, Clone, Copy)]
pub struct ConnectFailed;

/// The waypoint's own circuit breaker refused the attempt (`UO`): marks its 503, which is
/// never retried whatever the codes say. A retry would only add load where the limit says
/// there is too much already (Envoy does not retry its overflow either).
#[derive(Debug, Clone, Copy)]
pub struct Overflowed;

pub fn layer() -> impl Layer<HttpService, Service = HttpService> + Clone {
    layer_fn(|next, req| {
        let retried = req
            .extensions()
            .get::<Selected>()
            .and_then(|s| s.rule.as_deref())
            .and_then(|r| r.retry.as_ref())
            .is_some_and(|p| p.attempts > 0);
        if !retried {
            return next.call(req);
        }
        Box::pin(handle(next.clone(), req))
    })
}

async fn handle(inner: HttpService, req: Request<Body>) -> Response<Body> {
    let rule = req
        .extensions()
        .get::<Selected>()
        .and_then(|s| s.rule.clone());
    let Some(policy) = rule
        .as_deref()
        .and_then(|r| r.retry.as_ref())
        .filter(|p| p.attempts > 0)
    else {
        return inner.call(req).await;
    };
    policy.budget.deposit();
    let (parts, b) = req.into_parts();
    let replayable = b.is_end_stream() || b.size_hint().exact().is_some_and(|n| n <= RETRY_BUFFER);
    if !replayable {
        return inner.call(Request::from_parts(parts, b)).await;
    }
    let bytes: Bytes = match b.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            tracing::debug!("request body failed before it was sent: {e}");
            return body::answer(
                body::is_grpc(&parts.headers),
                http::StatusCode::BAD_REQUEST,
                "the request body ended early",
            );
        }
    };
    let exchange = parts.extensions.get::<Exchange>().cloned();
    let mut attempt: u32 = 0;
    loop {
        let mut req = Request::new(body::full(bytes.clone()));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        *req.extensions_mut() = parts.extensions.clone();
        let resp = inner.call(req).await;
        attempt += 1;
        if let Some(x) = &exchange {
            x.with(|l| l.attempts = attempt);
        }
        let overflowed = resp.extensions().get::<Overflowed>().is_some();
        let failed = !overflowed
            && (resp.extensions().get::<ConnectFailed>().is_some()
                || policy.codes.contains(&resp.status().as_u16()));
        if !failed {
            return resp;
        }
        if attempt > policy.attempts || !policy.budget.withdraw() {
            if let Some(x) = &exchange {
                x.flag(Flag::RetryLimitExceeded);
            }
            return resp;
        }
        // The failed attempt's flags describe an attempt, not the request's outcome.
        if let Some(x) = &exchange {
            x.with(|l| {
                l.flags.retain(|f| {
                    !matches!(
                        f,
                        Flag::UpstreamConnectFailure
                            | Flag::UpstreamReset
                            | Flag::UpstreamTimeout
                            | Flag::NoHealthyUpstream
                            | Flag::UpstreamOverflow
                    )
                })
            });
        }
        drop(resp);
        tokio::time::sleep(backoff(policy.backoff, attempt)).await;
    }
}

/// Full jitter over an exponential ceiling, capped at ten times the base (Envoy's scheme).
fn backoff(base: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(base.saturating_mul(10));
    let ms = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(fastrand::u64(0..=ms))
}
