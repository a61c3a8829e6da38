//! The one pooled HTTP client every upstream request goes through: hyper's
//! connection-pooling client (`hyper_util::client::legacy`) over rustls, with
//! nothing between the gateway and the connection.
//!
//! It replaced reqwest on the hot path: reqwest parsed each request's URL
//! twice more (its own request and its redirect policy) and wrapped every
//! call in redirect-following and retry layers the gateway does not use (it
//! has its own attempt loop and never follows an upstream's redirect), about
//! a tenth of polyplex's instructions per proxied request. Upstream URIs are
//! parsed once per distinct URL ([`UriCache`]).
//!
//! An outbound proxy is honoured as reqwest did: `HTTPS_PROXY`, `HTTP_PROXY`,
//! `ALL_PROXY` and `NO_PROXY` (or their lower-case forms), credentials in the
//! proxy URL sent as `Proxy-Authorization`. Every upstream connection through
//! a proxy is a `CONNECT` tunnel (TLS to the upstream runs inside it), for
//! plain-HTTP upstreams too.

use bytes::Bytes;
use http::header::{HeaderValue, USER_AGENT};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

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
    user_agent: HeaderValue,
}

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
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(Connector {
                http,
                proxy: Arc::new(proxy),
            });
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(max_idle_per_host)
            .build(https);
        Ok(HttpClient {
            inner,
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
    ) -> Result<Response<Incoming>, Failure> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        req.headers_mut()
            .entry(USER_AGENT)
            .or_insert_with(|| self.user_agent.clone());
        self.inner.request(req).await.map_err(|e| {
            if e.is_connect() {
                Failure::Connect
            } else {
                Failure::Broken
            }
        })
    }
}

/// The whole body of an answer.
pub async fn read_body(body: Incoming) -> Result<Bytes, Failure> {
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
