//! The attempt loop: sends a request to each deployment of the plan in turn,
//! retrying retryable failures with exponential backoff and full jitter (or
//! the upstream's `retry-after`), and failing over to the next deployment.
//! Decisions read [`GatewayError::retryable`] and nothing else, plus one rule:
//! an upstream's 401/403/404 (wrong key or unknown model *there*) moves on to
//! the next deployment without retrying, since another provider may serve it.
//!
//! Streams are committed only once their first chunk has arrived, so a
//! failure before the first byte fails over invisibly.

use crate::routing::Deployment;
use crate::server::AppState;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use http::StatusCode;
use polyplex_providers::sse::{self, Parser};
use polyplex_providers::{Endpoint, Reply, StreamDecoder, StreamItem};
use polyplex_types::{ErrorSource, GatewayError, JsonMap, Usage};
use rand::Rng;
use std::time::{Duration, Instant};

/// Longest `retry-after` polyplex waits out on one provider before moving on.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(4);

/// How an attempt loop ended.
pub struct Outcome<T> {
    /// The answer and the deployment that gave it.
    pub result: Result<(T, Deployment), GatewayError>,
    /// The deployment that answered, or the last one tried.
    pub deployment: Option<Deployment>,
    pub attempts: u32,
    /// Deployments given up on before the one that answered.
    pub failed_over: Vec<String>,
}

/// Full-jitter exponential backoff: uniform in [0, min(cap, base·2^retry)].
pub fn backoff(retry: u32, rng: &mut impl Rng) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << retry.min(16))
        .min(BACKOFF_CAP);
    Duration::from_micros(rng.gen_range(0..=ceiling.as_micros() as u64))
}

fn moves_on(e: &GatewayError) -> bool {
    e.source == ErrorSource::Upstream && matches!(e.status.as_u16(), 401 | 403 | 404)
}

/// Runs `once` over the plan with retries and failover.
pub async fn attempt_loop<T, F, Fut>(plan: &[Deployment], mut once: F) -> Outcome<T>
where
    F: FnMut(Deployment) -> Fut,
    Fut: std::future::Future<Output = Result<T, GatewayError>>,
{
    let mut attempts = 0;
    let mut failed_over = Vec::new();
    let mut last: Option<(GatewayError, Deployment)> = None;
    'deployments: for d in plan {
        let mut retry = 0;
        loop {
            attempts += 1;
            match once(d.clone()).await {
                Ok(v) => {
                    return Outcome {
                        result: Ok((v, d.clone())),
                        deployment: Some(d.clone()),
                        attempts,
                        failed_over,
                    }
                }
                Err(e) => {
                    tracing::debug!(deployment = %d.label(), attempt = attempts, error = %e, "attempt failed");
                    let retryable = e.retryable;
                    let next = moves_on(&e);
                    let wait = e.retry_after;
                    last = Some((e, d.clone()));
                    if !retryable && !next {
                        break 'deployments;
                    }
                    if retryable
                        && retry < d.upstream.max_retries
                        && wait.is_none_or(|w| w <= MAX_RETRY_AFTER)
                    {
                        let pause = wait.unwrap_or_else(|| backoff(retry, &mut rand::thread_rng()));
                        retry += 1;
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    failed_over.push(d.label());
                    continue 'deployments;
                }
            }
        }
    }
    let (err, dep) = match last {
        Some((e, d)) => (e, Some(d)),
        None => (
            GatewayError::service_unavailable("No deployment is available for this model."),
            None,
        ),
    };
    if !failed_over.is_empty() && failed_over.last() == dep.as_ref().map(Deployment::label).as_ref()
    {
        failed_over.pop();
    }
    Outcome {
        result: Err(err),
        deployment: dep,
        attempts,
        failed_over,
    }
}

fn retry_after(h: &http::HeaderMap) -> Option<Duration> {
    let v = h.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs >= 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs));
    }
    // retry-after-ms (OpenAI) is read by the caller; HTTP dates are rare upstream.
    None
}

fn retry_after_ms(h: &http::HeaderMap) -> Option<Duration> {
    h.get("retry-after-ms")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
}

fn transport_error(d: &Deployment, e: &reqwest::Error, timeout: Duration) -> GatewayError {
    if e.is_timeout() {
        GatewayError::upstream_timeout(&d.upstream.name, timeout)
    } else {
        // reqwest's Display names the URL; the URL has no secret, but keep it short.
        let detail = if e.is_connect() {
            "connection failed"
        } else if e.is_body() || e.is_decode() {
            "the connection broke while reading the reply"
        } else {
            "request failed"
        };
        GatewayError::upstream_unreachable(&d.upstream.name, detail)
    }
}

async fn upstream_error(d: &Deployment, resp: reqwest::Response) -> GatewayError {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let wait = retry_after_ms(resp.headers()).or_else(|| retry_after(resp.headers()));
    let body = resp.bytes().await.unwrap_or_default();
    let mut e = d.upstream.protocol.error(&d.upstream.name, status, &body);
    e.retry_after = wait;
    redact(e, d)
}

fn redact(e: GatewayError, d: &Deployment) -> GatewayError {
    match d.upstream.api_key() {
        Some(k) => e.redact(k),
        None => e,
    }
}

/// Upstream URLs parsed once: `url` parsing (with IDNA host processing)
/// was a tenth of polyplex's instructions per proxied request. Bounded, since
/// a URL can hold a client-chosen model name (Gemini, Azure deployments).
#[derive(Default)]
pub struct UrlCache(std::sync::RwLock<std::collections::HashMap<String, reqwest::Url>>);

impl UrlCache {
    const MAX: usize = 4096;

    pub fn get(&self, s: &str) -> Result<reqwest::Url, GatewayError> {
        if let Some(u) = self.0.read().ok().and_then(|m| m.get(s).cloned()) {
            return Ok(u);
        }
        let u = reqwest::Url::parse(s)
            .map_err(|e| GatewayError::internal(format!("invalid upstream URL: {e}")))?;
        if let Ok(mut m) = self.0.write() {
            if m.len() < Self::MAX {
                m.insert(s.to_string(), u.clone());
            }
        }
        Ok(u)
    }
}

fn request(
    app: &AppState,
    d: &Deployment,
    endpoint: Endpoint,
    body: &JsonMap,
    stream: bool,
) -> Result<(reqwest::RequestBuilder, Vec<String>), GatewayError> {
    let drop = d.upstream.drop_params
        || body
            .get("drop_params")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
    let catalog = app.router.catalog();
    let req = d.upstream.protocol.build(
        endpoint,
        body,
        stream,
        &d.upstream.target(catalog, &d.model, drop),
    )?;
    if !req.dropped.is_empty() {
        tracing::debug!(deployment = %d.label(), dropped = ?req.dropped, "parameters dropped (drop_params)");
    }
    Ok((
        app.http
            .post(app.urls.get(&req.url)?)
            .headers(req.headers)
            .body(req.body),
        req.dropped,
    ))
}

/// A non-streamed answer.
pub struct Unary {
    /// The OpenAI-shaped response.
    pub response: Reply,
    /// Usage as the upstream reported it.
    pub usage: Option<Usage>,
    /// Parameters dropped under `drop_params`.
    pub dropped: Vec<String>,
}

/// One non-streamed attempt.
pub async fn unary_once(
    app: &AppState,
    d: &Deployment,
    endpoint: Endpoint,
    body: &JsonMap,
) -> Result<Unary, GatewayError> {
    let timeout = d.upstream.timeout;
    let fut = async {
        let (req, dropped) = request(app, d, endpoint, body, false)?;
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(d, &e, timeout))?;
        if !resp.status().is_success() {
            return Err(upstream_error(d, resp).await);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(d, &e, timeout))?;
        let (response, usage) = d
            .upstream
            .protocol
            .parse_reply(endpoint, &d.upstream.name, body, &bytes)
            .map_err(|e| redact(e, d))?;
        Ok(Unary {
            response,
            usage,
            dropped,
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(GatewayError::upstream_timeout(&d.upstream.name, timeout)),
    }
}

/// An upstream stream whose first chunk has arrived.
pub struct OpenStream {
    pub body: BoxStream<'static, reqwest::Result<Bytes>>,
    pub parser: Parser,
    pub decoder: Box<dyn StreamDecoder>,
    /// Items decoded so far (at least one chunk).
    pub pending: Vec<StreamItem>,
    pub idle_timeout: Duration,
    pub first_byte_at: Instant,
    /// Parameters dropped under `drop_params`.
    pub dropped: Vec<String>,
}

/// One streamed attempt, up to and including the first chunk.
pub async fn stream_once(
    app: &AppState,
    d: &Deployment,
    endpoint: Endpoint,
    body: &JsonMap,
) -> Result<OpenStream, GatewayError> {
    let limit = d.upstream.first_byte_timeout;
    let fut = async {
        let (req, dropped) = request(app, d, endpoint, body, true)?;
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(d, &e, limit))?;
        if !resp.status().is_success() {
            return Err(upstream_error(d, resp).await);
        }
        let mut upstream = resp.bytes_stream().boxed();
        let mut parser = Parser::new();
        let mut decoder =
            d.upstream
                .protocol
                .stream_decoder(endpoint, &d.upstream.name, &d.model, body);
        let mut events: Vec<sse::Event> = Vec::new();
        let mut pending = Vec::new();
        loop {
            match upstream.next().await {
                Some(Ok(bytes)) => {
                    parser.feed(&bytes, &mut events);
                    for ev in events.drain(..) {
                        decoder
                            .on_event(&ev, &mut pending)
                            .map_err(|e| redact(e, d))?;
                    }
                    if !pending.is_empty() {
                        return Ok(OpenStream {
                            body: upstream,
                            parser,
                            decoder,
                            pending,
                            idle_timeout: d.upstream.idle_timeout,
                            first_byte_at: Instant::now(),
                            dropped,
                        });
                    }
                }
                Some(Err(e)) => return Err(transport_error(d, &e, limit)),
                None => {
                    decoder.finish(&mut pending).map_err(|e| redact(e, d))?;
                    return Err(GatewayError::upstream_bad_response(
                        &d.upstream.name,
                        "the stream ended before its first chunk",
                    ));
                }
            }
        }
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(GatewayError::upstream_timeout(&d.upstream.name, limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let mut rng = rand::thread_rng();
        for retry in 0..40 {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1u32 << retry.min(16))
                .min(BACKOFF_CAP);
            for _ in 0..50 {
                let b = backoff(retry, &mut rng);
                assert!(b <= ceiling && b <= BACKOFF_CAP, "retry {retry}: {b:?}");
            }
        }
    }

    #[test]
    fn retry_after_headers() {
        let mut h = http::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after_ms(&h), Some(Duration::from_millis(150)));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
