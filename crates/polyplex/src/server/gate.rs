//! Stages 1 and 2 in one service around the axum router: the request id and
//! the key check. One plain `Service` instead of two `from_fn` layers: those
//! clone the inner service and box a future each, per request, on every
//! route (5 % of the instructions of a small proxied request).

use super::auth::{Caller, Checked};
use super::{auth, busy, handlers, App, RequestId};
use crate::server::respond::names::REQUEST_ID;
use crate::server::respond::ApiError;
use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use futures::future::Either;
use polyplex_providers::Endpoint;
use polyplex_types::GatewayError;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// The router behind the gate (see the module docs).
#[derive(Clone)]
pub struct Gate {
    app: App,
    router: axum::Router,
}

impl Gate {
    pub fn new(app: App, router: axum::Router) -> Self {
        Self { app, router }
    }

    /// A request made inside the gateway (a batch's), routed without the
    /// gate: the caller has put its [`RequestId`] and [`Caller`] on it.
    pub async fn route(&self, req: Request) -> Response {
        match self.router.clone().call(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

/// The routes that need a key: the API and the admin endpoints. Anything
/// else (health, metrics, unknown paths) is answered without one, so an
/// unknown URL is a 404 whoever asks.
fn needs_key(path: &str) -> bool {
    matches!(
        path,
        "/v1/chat/completions"
            | "/v1/completions"
            | "/v1/embeddings"
            | "/v1/responses"
            | "/v1/models"
            | "/v1/conversations"
            | "/v1/files"
            | "/v1/batches"
            | "/v1/messages"
            | "/v1/messages/count_tokens"
            | "/v1/rerank"
            | "/v2/rerank"
    ) || super::passthrough::Kind::of(path).is_some()
        || path
            .strip_prefix("/v1/models/")
            .is_some_and(|id| !id.is_empty())
        || super::genai::is_vertex_path(path)
        || path
            .strip_prefix("/model/")
            .is_some_and(|rest| !rest.is_empty())
        || path == "/v1beta/models"
        || path
            .strip_prefix("/v1beta/models/")
            .is_some_and(|id| !id.is_empty())
        || path
            .strip_prefix("/v1/responses/")
            .is_some_and(|id| !id.is_empty())
        || ["/v1/conversations/", "/v1/files/", "/v1/batches/"]
            .iter()
            .any(|p| path.strip_prefix(p).is_some_and(|id| !id.is_empty()))
        || is_admin(path)
}

/// The admin API: the master key only.
fn is_admin(path: &str) -> bool {
    matches!(
        path,
        "/admin/providers"
            | "/admin/usage"
            | "/admin/usage/records"
            | "/admin/keys"
            | "/admin/reload"
    ) || ["/admin/keys/", "/admin/usage/records/"].iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
    })
}

/// The API endpoint a request is, if it is a POST to one. With a key checked
/// at once its handler is called directly, without the router's path
/// lookup, method dispatch, extractors and boxed service: those cost about 3
/// of the gateway's own 27 µs on a warm request and 17 of 100 on a cold one
/// (a stream that starts after another; docs/performance.md, "Seventh
/// session: the stages of a stream start").
fn api_endpoint(method: &Method, path: &str) -> Option<Endpoint> {
    if method != Method::POST {
        return None;
    }
    match path {
        "/v1/chat/completions" => Some(Endpoint::Chat),
        "/v1/completions" => Some(Endpoint::Completions),
        "/v1/embeddings" => Some(Endpoint::Embeddings),
        _ => None,
    }
}

/// The caller may use this path (gateway keys: not the admin API).
fn permitted(admin: bool, caller: Caller) -> Result<Caller, GatewayError> {
    if admin && !caller.is_admin() {
        return Err(GatewayError::forbidden(
            "The admin API needs the master key; a gateway key cannot use it.",
        )
        .with_code("insufficient_permissions"));
    }
    Ok(caller)
}

fn sane_id(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    (!s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
    .then_some(s)
}

/// `req_` and a random UUID in 32 hex digits.
pub(super) fn new_request_id() -> Arc<str> {
    let mut buf = [0u8; 4 + uuid::fmt::Simple::LENGTH];
    buf[..4].copy_from_slice(b"req_");
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .simple()
        .encode_lower(&mut buf[4..]);
    Arc::from(std::str::from_utf8(&buf).unwrap_or("req_"))
}

impl Service<Request> for Gate {
    type Response = Response;
    type Error = Infallible;
    type Future = Gated;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The axum router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Gated {
        self.gate(req)
    }
}

/// The gate as hyper calls it on each connection (`crate::serve_listener`):
/// by reference, the request's body as hyper reads it. A request from a web
/// page whose origin may call goes through tower-http's CORS service around
/// the gate (`super::browsers`); the rest straight to the gate.
impl hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for Gate {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Gated, tower_http::cors::ResponseFuture<Gated>>;

    fn call(&self, req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        let req = req.map(axum::body::Body::new);
        match self.app.browsers.load().cors_for(req.headers()) {
            Some(cors) => Either::Right(cors.layer(self.clone()).call(req)),
            None => Either::Left(self.gate(req)),
        }
    }
}

impl Gate {
    fn gate(&self, mut req: Request) -> Gated {
        crate::phase::start();
        let id: Arc<str> = match req.headers().get(&REQUEST_ID).and_then(sane_id) {
            Some(s) => Arc::from(s),
            None => new_request_id(),
        };
        let in_flight = busy::begin();
        if let Some(e) = self.app.browsers.load().refuse(req.uri(), req.headers()) {
            return Gated {
                inner: Inner::Refused(Some(ApiError(e).into_response())),
                id,
                _in_flight: in_flight,
            };
        }
        if super::genai::is_gemini_path(req.uri().path()) {
            super::genai::key_from_query(&mut req);
        }
        let path = req.uri().path();
        let admin = is_admin(path);
        let api = api_endpoint(req.method(), path);
        let inner = if !needs_key(path) {
            req.extensions_mut().insert(RequestId(id.clone()));
            Inner::Routed(self.router.clone().call(req))
        } else {
            let checked = auth::check(&self.app, req.headers());
            crate::phase::mark("auth");
            match checked {
                Checked::Done(caller) => match (caller.and_then(|c| permitted(admin, c)), api) {
                    (Ok(c), Some(endpoint)) => Inner::Boxed(Box::pin(handlers::handle(
                        self.app.clone(),
                        RequestId(id.clone()),
                        c,
                        endpoint,
                        endpoint.as_str(),
                        req,
                    ))),
                    (Ok(c), None) => {
                        req.extensions_mut().insert(RequestId(id.clone()));
                        req.extensions_mut().insert(c);
                        Inner::Routed(self.router.clone().call(req))
                    }
                    (Err(e), _) => Inner::Refused(Some(refusal(path, e))),
                },
                Checked::Lookup(token) => {
                    req.extensions_mut().insert(RequestId(id.clone()));
                    // Rare (a key made on another replica a moment ago): the
                    // store is asked, then the request is routed.
                    let app = self.app.clone();
                    let mut router = self.router.clone();
                    Inner::Boxed(Box::pin(async move {
                        let caller = app
                            .keys
                            .authenticate(&token)
                            .await
                            .map(Caller::Key)
                            .map_err(auth::refused)
                            .and_then(|c| permitted(admin, c));
                        match caller {
                            Ok(c) => {
                                req.extensions_mut().insert(c);
                                match router.call(req).await {
                                    Ok(r) => r,
                                    Err(never) => match never {},
                                }
                            }
                            Err(e) => refusal(req.uri().path(), e),
                        }
                    }))
                }
            }
        };
        Gated {
            inner,
            id,
            _in_flight: in_flight,
        }
    }
}

/// A request refused at the gate, in OpenAI's error shape, or Anthropic's
/// on its Messages API.
fn refusal(path: &str, e: GatewayError) -> Response {
    if path.starts_with("/v1/messages") {
        super::respond::anthropic_error(e)
    } else if super::genai::is_gemini_path(path) {
        super::genai::google_error(e)
    } else if path.starts_with("/model/") {
        super::invoke::bedrock_error(&e)
    } else {
        ApiError(e).into_response()
    }
}

enum Inner {
    Routed(axum::routing::future::RouteFuture<Infallible>),
    /// An API call answered without the router (see [`api_endpoint`]), or
    /// a request whose key is first looked up in the store.
    Boxed(Pin<Box<dyn Future<Output = Response> + Send>>),
    Refused(Option<Response>),
}

/// The router's answer with the request id on it. Dropping it (the client
/// went away) ends the request's in-flight count like answering does.
pub struct Gated {
    inner: Inner,
    id: Arc<str>,
    _in_flight: busy::InFlight,
}

impl Future for Gated {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `Gated` is `Unpin`: `RouteFuture` is, and so is everything else here.
        let this = self.get_mut();
        let mut resp = match &mut this.inner {
            Inner::Routed(f) => match Pin::new(f).poll(cx) {
                Poll::Ready(Ok(r)) => r,
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => return Poll::Pending,
            },
            Inner::Boxed(f) => match f.as_mut().poll(cx) {
                Poll::Ready(r) => r,
                Poll::Pending => return Poll::Pending,
            },
            Inner::Refused(r) => r.take().unwrap_or_default(),
        };
        crate::phase::mark("resp");
        if let Ok(v) = HeaderValue::from_str(&this.id) {
            resp.headers_mut().insert(&REQUEST_ID, v);
        }
        Poll::Ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_req_and_32_hex_digits_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 36);
        assert!(a.starts_with("req_"));
        assert!(a[4..]
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
    }

    #[test]
    fn only_posts_to_the_api_paths_skip_the_router() {
        let post = Method::POST;
        assert_eq!(
            api_endpoint(&post, "/v1/chat/completions"),
            Some(Endpoint::Chat)
        );
        assert_eq!(
            api_endpoint(&post, "/v1/completions"),
            Some(Endpoint::Completions)
        );
        assert_eq!(
            api_endpoint(&post, "/v1/embeddings"),
            Some(Endpoint::Embeddings)
        );
        // Other methods get the router's 405; other paths its answer.
        for m in [Method::GET, Method::PUT, Method::HEAD] {
            assert_eq!(api_endpoint(&m, "/v1/chat/completions"), None, "{m}");
        }
        for p in ["/v1/models", "/v1/chat/completions/", "/admin/keys", "/"] {
            assert_eq!(api_endpoint(&post, p), None, "{p}");
        }
    }

    #[test]
    fn keys_guard_the_api_and_admin_routes_only() {
        for p in [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/models",
            "/v1/models/gpt-4o",
            "/v1/models/openai/gpt-4o",
            "/v1/conversations",
            "/v1/conversations/conv_1/items",
            "/v1/rerank",
            "/v2/rerank",
            "/v1beta/models/gpt-4o:generateContent",
            "/admin/providers",
            "/admin/usage",
            "/admin/keys",
            "/admin/reload",
            "/admin/keys/key_1",
            "/admin/usage/records",
            "/admin/usage/records/req_1",
        ] {
            assert!(needs_key(p), "{p}");
        }
        for p in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/models/",
            "/v1/nothing-here",
            "/admin/providersx",
            "/admin",
            "/",
        ] {
            assert!(!needs_key(p), "{p}");
        }
    }
}
