//! The one HTTP client every upstream request goes through.
//!
//! Upstreams over TLS, over HTTP/2 or behind an outbound proxy go through
//! hyper's connection-pooling client (`hyper_util::client::legacy`) over
//! rustls. Plain-HTTP upstreams reached directly (a local vLLM, Ollama or
//! a mock; the benchmark's upstream) go through [`Plain`]: HTTP/1.1
//! connections made with hyper's own connection API and kept, idle, in a
//! list per host. Each serving thread has its own client, so that list is
//! only ever touched by one thread: taking a connection is a lock nobody
//! else holds and a pop, where hyper-util's pool hashes its key with SipHash
//! and spawns a task per request to put the connection back (about 8,000
//! instructions per proxied request; docs/performance.md, "Ninth session").
//!
//! hyper-util replaced reqwest on the hot path: reqwest parsed each
//! request's URL twice more (its own request and its redirect policy) and
//! wrapped every call in redirect-following and retry layers the gateway
//! does not use (it has its own attempt loop and never follows an
//! upstream's redirect), about a tenth of polyplex's instructions per
//! proxied request. Upstream URIs are parsed once per distinct URL
//! ([`UriCache`]).
//!
//! An outbound proxy is honoured as reqwest did: `HTTPS_PROXY`, `HTTP_PROXY`,
//! `ALL_PROXY` and `NO_PROXY` (or their lower-case forms), credentials in the
//! proxy URL sent as `Proxy-Authorization`. Every upstream connection through
//! a proxy is a `CONNECT` tunnel (TLS to the upstream runs inside it), for
//! plain-HTTP upstreams too.

use bytes::Bytes;
use http::header::{HeaderValue, HOST, USER_AGENT};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// TCP to the upstream, or a `CONNECT` tunnel to it through the proxy the
/// environment names for it.
#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    proxy: Arc<Matcher>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let via = self.proxy.intercept(&dst);
        let mut http = self.http.clone();
        match via {
            None => Box::pin(async move { http.call(dst).await.map_err(BoxError::from) }),
            Some(p) => {
                let mut tunnel = Tunnel::new(p.uri().clone(), http);
                if let Some(auth) = p.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Box::pin(async move { tunnel.call(dst).await.map_err(BoxError::from) })
            }
        }
    }
}

/// Why an upstream call failed before a status line arrived, or while its body was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection (refused, DNS, TLS handshake, connect timeout).
    Connect,
    /// The connection broke while the request was sent or the reply read.
    Broken,
    /// The request could not be built (a bad URL or header).
    Request,
    /// No answer in time (set by callers that bound a call).
    Timeout,
}

impl Failure {
    /// What a client is told (never the URL or the OS error text).
    pub fn detail(self) -> &'static str {
        match self {
            Failure::Connect => "connection failed",
            Failure::Broken => "the connection broke while reading the reply",
            Failure::Request => "request failed",
            Failure::Timeout => "timed out",
        }
    }
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<Connector>, Full<Bytes>>,
    plain: Arc<Plain>,
    user_agent: HeaderValue,
}

/// How long an idle upstream connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

impl HttpClient {
    /// TCP_NODELAY, `connect_timeout` per connection, idle connections kept
    /// 90 s (up to `max_idle_per_host` per host), HTTP/2 when the upstream
    /// offers it by ALPN, the environment's outbound proxy settings.
    pub fn new(connect_timeout: Duration, max_idle_per_host: usize) -> Result<HttpClient, String> {
        Self::with_proxy(connect_timeout, max_idle_per_host, Matcher::from_env())
    }

    /// [`HttpClient::new`] with the outbound proxy settings given.
    pub fn with_proxy(
        connect_timeout: Duration,
        max_idle_per_host: usize,
        proxy: Matcher,
    ) -> Result<HttpClient, String> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        http.enforce_http(false);
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_root_certificates(rustls::RootCertStore::from_iter(
            webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
        ))
        .with_no_client_auth();
        let proxy = Arc::new(proxy);
        let plain = Arc::new(Plain {
            http: http.clone(),
            proxy: proxy.clone(),
            max_idle: max_idle_per_host,
            hosts: Mutex::new(Vec::new()),
        });
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(Connector { http, proxy });
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(max_idle_per_host)
            .build(https);
        Ok(HttpClient {
            inner,
            plain,
            user_agent: HeaderValue::from_static(concat!("polyplex/", env!("CARGO_PKG_VERSION"))),
        })
    }

    /// Sends one request; the answer's head (any status) or why there is none.
    pub async fn send(
        &self,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<UpstreamBody>, Failure> {
        let plain = match uri.scheme() == Some(&Scheme::HTTP) {
            true => self.plain.route(&uri),
            false => None,
        };
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.headers_mut() = headers;
        req.headers_mut()
            .entry(USER_AGENT)
            .or_insert_with(|| self.user_agent.clone());
        if let Some((authority, host)) = plain {
            req.headers_mut().entry(HOST).or_insert(host);
            *req.uri_mut() = origin_form(&uri);
            return self.plain.send(req, uri, authority).await;
        }
        *req.uri_mut() = uri;
        match self.inner.request(req).await {
            Ok(r) => Ok(r.map(UpstreamBody::pooled_elsewhere)),
            Err(e) if e.is_connect() => Err(Failure::Connect),
            Err(_) => Err(Failure::Broken),
        }
    }

    /// Idle plain-HTTP connections kept now (tests).
    #[cfg(test)]
    fn idle_plain(&self) -> usize {
        self.plain
            .hosts
            .lock()
            .map(|h| h.iter().map(|h| h.idle.len()).sum())
            .unwrap_or(0)
    }
}

/// `/path?query` of a URI, as a request line to the origin server carries it.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

/// HTTP/1.1 connections to plain-HTTP upstreams reached without a proxy,
/// made with hyper's connection API and kept idle per host (see the module
/// docs). A connection goes back to its host's list when its answer's body
/// has been read to its end or dropped, and is taken again only when hyper
/// says it is ready for another request: the rest of a dropped answer that
/// has already arrived (a stream's last chunk after `[DONE]`) is drained,
/// and a connection whose answer is still coming (the client went away, a
/// timeout) is closed by hyper and then dropped from the list.
struct Plain {
    http: HttpConnector,
    proxy: Arc<Matcher>,
    max_idle: usize,
    /// Few hosts per gateway: a list searched in order beats hashing the key.
    hosts: Mutex<Vec<Host>>,
}

struct Host {
    authority: Authority,
    /// Reached directly (no proxy applies to it).
    direct: bool,
    /// The `Host` header for it.
    host: HeaderValue,
    /// Most recently used last.
    idle: Vec<Idle>,
    /// An idle sweep is scheduled on this thread.
    sweeping: bool,
}

struct Idle {
    tx: http1::SendRequest<Full<Bytes>>,
    since: Instant,
}

impl Idle {
    fn usable(&self, now: Instant) -> bool {
        !self.tx.is_closed() && now.duration_since(self.since) < IDLE_TIMEOUT
    }
}

impl Plain {
    /// The authority and `Host` header of a plain-HTTP URI reached directly,
    /// or None when a proxy applies to it.
    fn route(&self, uri: &Uri) -> Option<(Authority, HeaderValue)> {
        let authority = uri.authority()?;
        let mut hosts = self.hosts.lock().ok()?;
        if let Some(h) = hosts.iter().find(|h| h.authority == *authority) {
            return h.direct.then(|| (h.authority.clone(), h.host.clone()));
        }
        let host = match authority.port_u16() {
            Some(80) => HeaderValue::from_str(authority.host()),
            _ => HeaderValue::from_str(authority.as_str()),
        }
        .ok()?;
        let direct = self.proxy.intercept(uri).is_none();
        // Bounded: URLs come from the configuration (and Azure and Gemini
        // deployments), but never let the list grow without end.
        if hosts.len() < 256 {
            hosts.push(Host {
                authority: authority.clone(),
                direct,
                host: host.clone(),
                idle: Vec::new(),
                sweeping: false,
            });
        }
        direct.then(|| (authority.clone(), host))
    }

    /// Runs `f` on the entry of `authority` under the lock; None when it
    /// has none (or the lock is poisoned).
    fn with_host<R>(&self, authority: &Authority, f: impl FnOnce(&mut Host) -> R) -> Option<R> {
        let mut hosts = self.hosts.lock().ok()?;
        hosts.iter_mut().find(|h| h.authority == *authority).map(f)
    }

    /// The most recently used idle connection to `authority` that is ready
    /// for a request; closed and expired ones found on the way are dropped,
    /// ones hyper has not finished with yet (the rest of a dropped answer
    /// still being drained) are left in the list.
    fn checkout(&self, authority: &Authority) -> Option<http1::SendRequest<Full<Bytes>>> {
        self.with_host(authority, |host| {
            let now = Instant::now();
            let mut busy = Vec::new();
            let found = loop {
                match host.idle.pop() {
                    None => break None,
                    Some(i) if !i.usable(now) => {}
                    Some(i) if i.tx.is_ready() => break Some(i.tx),
                    Some(i) => busy.push(i),
                }
            };
            host.idle.extend(busy.into_iter().rev());
            found
        })
        .flatten()
    }

    /// Puts a connection whose answer was read or dropped back in its
    /// host's list (closed instead when the list is full or it is closing).
    /// Returns whether a sweep of the host's list must be scheduled.
    fn checkin(&self, authority: &Authority, tx: http1::SendRequest<Full<Bytes>>) -> bool {
        if tx.is_closed() {
            return false;
        }
        self.with_host(authority, |host| {
            if host.idle.len() >= self.max_idle {
                return false;
            }
            host.idle.push(Idle {
                tx,
                since: Instant::now(),
            });
            !std::mem::replace(&mut host.sweeping, true)
        })
        .unwrap_or(false)
    }

    /// Closes a host's idle connections that expired or that the upstream
    /// closed; returns whether any are left (to sweep again later).
    fn sweep(&self, authority: &Authority) -> bool {
        self.with_host(authority, |host| {
            let now = Instant::now();
            host.idle.retain(|i| i.usable(now));
            host.sweeping = !host.idle.is_empty();
            host.sweeping
        })
        .unwrap_or(false)
    }

    async fn send(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
        uri: Uri,
        authority: Authority,
    ) -> Result<Response<UpstreamBody>, Failure> {
        while let Some(mut tx) = self.checkout(&authority) {
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(self.answer(resp, authority, tx)),
                Err(mut e) => match e.take_message() {
                    // Never written: the connection was closing (the
                    // upstream's keep-alive ran out meanwhile). Next one.
                    Some(r) => req = r,
                    None => return Err(Failure::Broken),
                },
            }
        }
        let io = tower_service::Service::call(&mut self.http.clone(), uri)
            .await
            .map_err(|_| Failure::Connect)?;
        let (mut tx, conn) = http1::handshake(io).await.map_err(|_| Failure::Connect)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        match tx.try_send_request(req).await {
            Ok(resp) => Ok(self.answer(resp, authority, tx)),
            Err(_) => Err(Failure::Broken),
        }
    }

    fn answer(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        authority: Authority,
        tx: http1::SendRequest<Full<Bytes>>,
    ) -> Response<UpstreamBody> {
        resp.map(|inner| UpstreamBody {
            inner,
            back: Some(Back {
                pool: Arc::downgrade(self),
                authority,
                tx,
            }),
        })
    }
}

/// Sweeps a host's idle connections every `IDLE_TIMEOUT / 3` while it has
/// some, on the thread that keeps them; ends with the client.
fn schedule_sweep(pool: Weak<Plain>, authority: Authority) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(IDLE_TIMEOUT / 3).await;
            match pool.upgrade() {
                Some(p) if p.sweep(&authority) => {}
                _ => return,
            }
        }
    });
}

/// Where a plain-HTTP connection goes back when its answer has been read.
struct Back {
    pool: Weak<Plain>,
    authority: Authority,
    tx: http1::SendRequest<Full<Bytes>>,
}

impl Back {
    fn checkin(self) {
        if let Some(pool) = self.pool.upgrade() {
            if pool.checkin(&self.authority, self.tx) {
                schedule_sweep(self.pool, self.authority);
            }
        }
    }
}

/// An upstream answer's body. A plain-HTTP connection goes back to its
/// pool once the body has been read to its end, or dropped.
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<Back>,
}

impl UpstreamBody {
    /// A body whose connection hyper-util's pool looks after.
    fn pooled_elsewhere(inner: Incoming) -> Self {
        UpstreamBody { inner, back: None }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            if let Some(back) = self.back.take() {
                back.checkin();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Not read to its end (a stream stops reading at `[DONE]`): hyper
        // drains what is left if it has arrived, and closes the connection
        // if not; until then it is not ready, and not taken (`checkout`).
        if let Some(back) = self.back.take() {
            back.checkin();
        }
    }
}

/// The whole body of an answer.
pub async fn read_body(body: UpstreamBody) -> Result<Bytes, Failure> {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|_| Failure::Broken)
}

/// Upstream URIs parsed once each. Bounded, since a URL can hold a
/// client-chosen model name (Gemini, Azure deployments).
#[derive(Default)]
pub struct UriCache(RwLock<HashMap<String, Uri>>);

impl UriCache {
    const MAX: usize = 4096;

    pub fn get(&self, s: &str) -> Result<Uri, Failure> {
        if let Some(u) = self.0.read().ok().and_then(|m| m.get(s).cloned()) {
            return Ok(u);
        }
        let u = Uri::try_from(s).map_err(|_| Failure::Request)?;
        if u.scheme().is_none() || u.authority().is_none() {
            return Err(Failure::Request);
        }
        if let Ok(mut m) = self.0.write() {
            if m.len() < Self::MAX {
                m.insert(s.to_string(), u.clone());
            }
        }
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_cached_and_checked() {
        let c = UriCache::default();
        let u = c.get("http://127.0.0.1:9/v1/chat/completions").unwrap();
        assert_eq!(u.path(), "/v1/chat/completions");
        assert_eq!(c.0.read().unwrap().len(), 1);
        assert_eq!(c.get("http://127.0.0.1:9/v1/chat/completions").unwrap(), u);
        assert_eq!(c.get("not a url"), Err(Failure::Request));
        assert_eq!(c.get("/relative/only"), Err(Failure::Request));
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_failure() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = HttpClient::new(Duration::from_secs(2), 4).unwrap();
        let uri: Uri = format!("http://127.0.0.1:{port}/v1/models")
            .parse()
            .unwrap();
        let r = client
            .send(Method::GET, uri, HeaderMap::new(), Bytes::new())
            .await;
        assert_eq!(r.err(), Some(Failure::Connect));
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An upstream that answers every request on a connection with `ok`.
    async fn upstream() -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                });
            }
        });
        addr
    }

    /// An upstream answering every request with `answer`, closing each
    /// connection after its first answer when `close` is set; counts the
    /// connections it accepted.
    async fn counting_upstream(
        answer: &'static [u8],
        close: bool,
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(answer).await.is_err() || close {
                            break;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn get_body(client: &HttpClient, to: std::net::SocketAddr) -> (u16, Bytes) {
        let uri: Uri = format!("http://{to}/v1/models").parse().unwrap();
        let r = client
            .send(Method::GET, uri, HeaderMap::new(), Bytes::new())
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, read_body(r.into_body()).await.unwrap())
    }

    fn accepted(n: &std::sync::atomic::AtomicUsize) -> usize {
        n.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn plain_http_connections_are_kept_and_reused() {
        const FIXED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        const CHUNKED: &[u8] =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n";
        for (answer, body) in [(FIXED, &b"ok"[..]), (CHUNKED, b"ok!!!")] {
            let (to, n) = counting_upstream(answer, false).await;
            let client =
                HttpClient::with_proxy(Duration::from_secs(2), 4, Matcher::builder().build())
                    .unwrap();
            for _ in 0..5 {
                assert_eq!(get_body(&client, to).await, (200, Bytes::from_static(body)));
            }
            assert_eq!(accepted(&n), 1, "one connection for five requests");
            assert_eq!(client.idle_plain(), 1);
            // Two at once need two connections; both are kept after.
            let (a, b) = tokio::join!(get_body(&client, to), get_body(&client, to));
            assert_eq!((a.0, b.0), (200, 200));
            assert_eq!(accepted(&n), 2);
            assert_eq!(client.idle_plain(), 2);
        }
    }

    #[tokio::test]
    async fn plain_http_requests_carry_origin_form_and_host() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = l.local_addr().unwrap();
        let (tx, mut heads) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).to_string());
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
            // Kept open, as a keep-alive upstream does.
            let _ = s.read(&mut buf).await;
        });
        let client =
            HttpClient::with_proxy(Duration::from_secs(2), 4, Matcher::builder().build()).unwrap();
        let uri: Uri = format!("http://{to}/v1/chat/completions?x=1")
            .parse()
            .unwrap();
        let r = client
            .send(
                Method::POST,
                uri,
                HeaderMap::new(),
                Bytes::from_static(b"{}"),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        drop(r);
        // An answer with no body leaves its connection idle at once.
        assert_eq!(client.idle_plain(), 1);
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("post /v1/chat/completions?x=1 http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("\r\nhost: {to}\r\n")), "{head}");
        assert!(head.contains("\r\nuser-agent: polyplex/"), "{head}");
        assert!(head.ends_with("\r\n\r\n{}"), "{head}");
    }

    #[tokio::test]
    async fn an_answer_dropped_after_it_arrived_leaves_its_connection_usable() {
        // A stream's relay stops reading at `[DONE]`; the rest of the
        // answer is already there.
        const CHUNKED: &[u8] =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let (to, n) = counting_upstream(CHUNKED, false).await;
        let client =
            HttpClient::with_proxy(Duration::from_secs(2), 4, Matcher::builder().build()).unwrap();
        let uri: Uri = format!("http://{to}/v1/models").parse().unwrap();
        for _ in 0..3 {
            let r = client
                .send(Method::GET, uri.clone(), HeaderMap::new(), Bytes::new())
                .await
                .unwrap();
            let mut body = r.into_body();
            let first = body.frame().await.unwrap().unwrap();
            assert_eq!(first.into_data().unwrap(), "ok");
            drop(body);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted(&n), 1, "one connection for three dropped answers");
        assert_eq!(get_body(&client, to).await.0, 200);
        assert_eq!(accepted(&n), 1);
    }

    #[tokio::test]
    async fn an_answer_dropped_while_still_coming_closes_its_connection() {
        // Ten bytes announced, two sent: the rest never comes.
        const PARTIAL: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok";
        let (to, n) = counting_upstream(PARTIAL, false).await;
        let client =
            HttpClient::with_proxy(Duration::from_secs(2), 4, Matcher::builder().build()).unwrap();
        let uri: Uri = format!("http://{to}/v1/models").parse().unwrap();
        for i in 1..=2 {
            let r = client
                .send(Method::GET, uri.clone(), HeaderMap::new(), Bytes::new())
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            drop(r);
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(accepted(&n), i, "a half-read connection was reused");
        }
        // The last one is closed: never taken, dropped when found.
        assert!(client.plain.checkout(uri.authority().unwrap()).is_none());
        assert_eq!(client.idle_plain(), 0);
    }

    #[tokio::test]
    async fn connections_the_upstream_closed_are_not_reused() {
        // Closed without saying so (a keep-alive timeout), and closed with
        // `connection: close`.
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        ] {
            let (to, n) = counting_upstream(answer, true).await;
            let client =
                HttpClient::with_proxy(Duration::from_secs(2), 4, Matcher::builder().build())
                    .unwrap();
            for i in 1..=3 {
                assert_eq!(get_body(&client, to).await.0, 200);
                // The connection's end is seen before the next request.
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert_eq!(accepted(&n), i);
            }
        }
    }

    #[tokio::test]
    async fn plain_http_through_a_proxy_uses_the_tunnel() {
        const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (to, n) = counting_upstream(ANSWER, false).await;
        let (via, mut seen) = proxy().await;
        let m = Matcher::builder().all(format!("http://{via}")).build();
        let client = HttpClient::with_proxy(Duration::from_secs(2), 4, m).unwrap();
        assert_eq!(get_body(&client, to).await.0, 200);
        assert!(seen.try_recv().is_ok(), "not through the proxy");
        assert_eq!(client.idle_plain(), 0);
        assert_eq!(accepted(&n), 1);
    }

    /// A CONNECT proxy that reports each tunnel's request head, then relays.
    async fn proxy() -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if s.read_exact(&mut b).await.is_err() {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let _ = tx.send(head);
                    let Ok(mut up) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = s
                        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                        .await;
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                });
            }
        });
        (addr, rx)
    }

    async fn get(client: &HttpClient, to: std::net::SocketAddr) -> u16 {
        let uri: Uri = format!("http://{to}/v1/models").parse().unwrap();
        client
            .send(Method::GET, uri, HeaderMap::new(), Bytes::new())
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn upstreams_are_reached_through_the_proxy_with_its_credentials() {
        let to = upstream().await;
        let (via, mut seen) = proxy().await;
        let m = Matcher::builder()
            .all(format!("http://user:s3cret@{via}"))
            .build();
        let client = HttpClient::with_proxy(Duration::from_secs(2), 4, m).unwrap();
        assert_eq!(get(&client, to).await, 200);
        let head = seen.try_recv().expect("the proxy saw the connection");
        assert!(
            head.starts_with(&format!("CONNECT {to} HTTP/1.1")),
            "{head}"
        );
        // "user:s3cret" in base64.
        assert!(
            head.to_ascii_lowercase()
                .contains("proxy-authorization: basic dxnlcjpzm2nyzxq="),
            "{head}"
        );
        // The tunnel is pooled like any connection.
        assert_eq!(get(&client, to).await, 200);
        assert!(seen.try_recv().is_err());
    }

    #[tokio::test]
    async fn no_proxy_hosts_are_reached_directly() {
        let to = upstream().await;
        let (via, mut seen) = proxy().await;
        let m = Matcher::builder()
            .all(format!("http://{via}"))
            .no("127.0.0.1")
            .build();
        let client = HttpClient::with_proxy(Duration::from_secs(2), 4, m).unwrap();
        assert_eq!(get(&client, to).await, 200);
        assert!(seen.try_recv().is_err(), "went through the proxy");
    }
}
