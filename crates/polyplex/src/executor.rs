//! The attempt loop: sends a request to each deployment of the plan in turn,
//! retrying retryable failures with exponential backoff and full jitter (or
//! the upstream's `retry-after`), and failing over to the next deployment.
//! Decisions read [`GatewayError::retryable`] and nothing else, plus one rule:
//! an upstream's 401/403/404 (wrong key or unknown model *there*) or its
//! refusal of a prompt too long for its model (`context_length_exceeded`, in
//! any provider's words) moves on to the next deployment without retrying,
//! since another provider or model may serve it.
//!
//! A deployment whose protocol cannot carry the request as asked (a
//! parameter, content part or endpoint it lacks: its adapter refused to
//! build it, [`ErrorSource::Translation`]) is passed over for the next one
//! without counting as an attempt; when no deployment can, the first such
//! refusal is the answer.
//!
//! Streams are committed only once their first chunk has arrived, so a
//! failure before the first byte fails over invisibly.

use crate::client::{read_body, Failure, UpstreamBody};
use crate::config::Hedge;
use crate::health::{Admission, InFlight, RetryBudget};
use crate::routing::{Deployment, Plan};
use crate::server::AppState;
use bytes::Bytes;
use futures::future::Either;
use futures::stream::BoxStream;
use futures::StreamExt;
use http::StatusCode;
use http_body_util::BodyExt;
use polyplex_providers::anthropic::{Anthropic, Native};
use polyplex_providers::sse::{self, Parser};
use polyplex_providers::Protocol;
use polyplex_providers::{
    Endpoint, MessagesCall, Reply, StreamDecoder, StreamItem, UpstreamRequest,
};
use polyplex_types::{ErrorSource, GatewayError, RequestBody, Usage};
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
    pub trace: Trace,
}

/// What the attempts were: the `x-polyplex-*` headers and the usage record.
#[derive(Debug, Default)]
pub struct Trace {
    /// The deployment that answered, or the last one tried.
    pub deployment: Option<Deployment>,
    pub attempts: u32,
    /// Deployments given up on before the one that answered.
    pub failed_over: Vec<String>,
    /// Deployments skipped because their circuit was open.
    pub skipped: Vec<String>,
    /// Deployments skipped because their provider's configured `rpm` /
    /// `tpm` had no room.
    pub limited: Vec<String>,
    /// True if a hedged second attempt was sent.
    pub hedged: bool,
}

/// Full-jitter exponential backoff: uniform in [0, min(cap, base·2^retry)].
pub fn backoff(retry: u32, rng: &mut impl Rng) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << retry.min(16))
        .min(BACKOFF_CAP);
    Duration::from_micros(rng.gen_range(0..=ceiling.as_micros() as u64))
}

fn moves_on(e: &GatewayError) -> bool {
    e.source == ErrorSource::Upstream
        && (matches!(e.status.as_u16(), 401 | 403 | 404) || e.code.as_deref() == Some(CONTEXT))
}

/// OpenAI's code for a prompt longer than the model's context window.
const CONTEXT: &str = "context_length_exceeded";

/// How providers word a prompt longer than their model's context window
/// (lower case): OpenAI and the servers that copy it (vLLM, Groq, ...),
/// Anthropic, Gemini, Bedrock, Cohere, Mistral.
const CONTEXT_WORDS: &[&str] = &[
    "context_length_exceeded",
    "maximum context length",
    "reduce the length of the messages",
    "prompt is too long",
    "input is too long",
    "too many input tokens",
    "too many tokens",
    "input token count",
    "exceeds the context window",
    "exceeds the model's context",
    "context window exceeded",
];

/// An upstream's refusal of a prompt too long for its model, whatever the
/// provider's words: answered with OpenAI's code (so one `except` serves
/// every provider), and failed over ([`moves_on`]): the next deployment's
/// model may have a larger window.
fn context_overflow(mut e: GatewayError) -> GatewayError {
    if !matches!(e.status.as_u16(), 400 | 413 | 422) || e.code.as_deref() == Some(CONTEXT) {
        return e;
    }
    let text = e.message.to_ascii_lowercase();
    if CONTEXT_WORDS.iter().any(|w| text.contains(w)) {
        e.code = Some(CONTEXT.into());
    }
    e
}

/// True if an error says something about the deployment's health (and so
/// counts toward its circuit breaker): never a client's own mistake.
pub fn counts_against(e: &GatewayError) -> bool {
    e.retryable || (e.source == ErrorSource::Upstream && e.status.is_server_error())
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    Retry(Duration),
    FailOver,
    Stop,
}

/// The one place that decides between retrying, failing over and stopping:
/// retryable errors retry (honouring `retry-after`, within the provider's
/// `max_retries` and the retry budget), then fail over; an upstream's
/// 401/403/404 or context-length refusal fails over at once; anything else
/// (a client's own 4xx) stops.
pub fn judge(
    e: &GatewayError,
    max_retries: u32,
    retry: u32,
    budget: &RetryBudget,
    now: Instant,
    rng: &mut impl Rng,
) -> Next {
    if e.source == ErrorSource::Translation {
        return Next::FailOver;
    }
    if !e.retryable && !moves_on(e) {
        return Next::Stop;
    }
    if e.retryable
        && retry < max_retries
        && e.retry_after.is_none_or(|w| w <= MAX_RETRY_AFTER)
        && budget.try_spend(now)
    {
        return Next::Retry(e.retry_after.unwrap_or_else(|| backoff(retry, rng)));
    }
    Next::FailOver
}

enum Flow<T> {
    Done(T),
    Resume {
        at: usize,
        retry: u32,
        pause: Option<Duration>,
    },
    Stop,
}

struct Attempts<'a> {
    app: &'a AppState,
    ds: &'a [Deployment],
    /// Unary answers are complete at once; streams have only begun.
    complete: bool,
    attempts: u32,
    failed_over: Vec<String>,
    skipped: Vec<String>,
    limited: Vec<String>,
    /// The upstream limit with the soonest room among `limited`'s.
    soonest: Option<(crate::window::Over, Deployment)>,
    last: Option<(GatewayError, Deployment)>,
    hedged: bool,
    /// Nothing admitted has answered: try the skipped deployments anyway.
    fail_open: bool,
    /// A client's own error ended the loop.
    stopped: bool,
}

impl<'a> Attempts<'a> {
    /// Asks the breaker, then the provider's configured `rpm` / `tpm`
    /// (which count the request if it goes); a deployment either refuses
    /// is noted as skipped or limited.
    async fn admit(&mut self, at: usize) -> bool {
        let d = &self.ds[at];
        let breaker = if self.fail_open {
            self.skipped.contains(&d.label())
        } else {
            match d.stats.admit(&self.app.health, Instant::now()) {
                Admission::Yes | Admission::Probe => true,
                Admission::No(_) => {
                    tracing::debug!(deployment = %d.label(), "circuit open; skipped");
                    if !self.skipped.contains(&d.label()) {
                        self.skipped.push(d.label());
                    }
                    false
                }
            }
        };
        if !breaker {
            return false;
        }
        let Err(over) = self.app.take_upstream(d).await else {
            return true;
        };
        tracing::debug!(deployment = %d.label(), ?over, "at its provider's configured rate limit; skipped");
        metrics::counter!("polyplex_upstream_limited_total", "provider" => d.upstream.name.clone())
            .increment(1);
        if !self.limited.contains(&d.label()) {
            self.limited.push(d.label());
        }
        if self
            .soonest
            .as_ref()
            .is_none_or(|(o, _)| over.wait() < o.wait())
        {
            self.soonest = Some((over, d.clone()));
        }
        false
    }

    /// The first deployment from `from` on that is admitted.
    async fn next_admitted(&mut self, from: usize) -> Option<usize> {
        for i in from..self.ds.len() {
            if self.admit(i).await {
                return Some(i);
            }
        }
        None
    }

    /// Records an attempt's result in the deployment's statistics and decides what follows.
    fn settle<T>(
        &mut self,
        at: usize,
        retry: u32,
        started: Instant,
        r: Result<T, GatewayError>,
    ) -> Flow<T> {
        let d = &self.ds[at];
        let now = Instant::now();
        let cfg = &self.app.health;
        match r {
            Ok(v) => {
                let took = now.saturating_duration_since(started);
                if d.stats
                    .on_success(cfg, now, took, self.complete.then_some(took))
                {
                    self.app.circuit_closed(d);
                }
                Flow::Done(v)
            }
            Err(e) => {
                tracing::debug!(deployment = %d.label(), attempt = self.attempts, error = %e, "attempt failed");
                if counts_against(&e) && d.stats.on_failure(cfg, now, &e.message) {
                    self.app.circuit_opened(d);
                }
                if e.status == StatusCode::TOO_MANY_REQUESTS {
                    if let Some(w) = e.retry_after {
                        d.stats.block_until(now + w);
                    }
                }
                let next = judge(
                    &e,
                    d.upstream.max_retries,
                    retry,
                    &self.app.retry_budget,
                    now,
                    &mut rand::thread_rng(),
                );
                // Nothing was sent: not an attempt. A refusal is the answer
                // only if no deployment gets further (the first one's).
                let refused = e.source == ErrorSource::Translation;
                if refused {
                    self.attempts = self.attempts.saturating_sub(1);
                }
                if !refused || self.last.is_none() {
                    self.last = Some((e, d.clone()));
                }
                match next {
                    Next::Retry(p) => Flow::Resume {
                        at,
                        retry: retry + 1,
                        pause: Some(p),
                    },
                    Next::FailOver => {
                        self.failed_over.push(d.label());
                        Flow::Resume {
                            at: at + 1,
                            retry: 0,
                            pause: None,
                        }
                    }
                    Next::Stop => Flow::Stop,
                }
            }
        }
    }

    fn done<T>(self, v: T, at: usize) -> Outcome<T> {
        let d = self.ds[at].clone();
        Outcome {
            result: Ok((v, d.clone())),
            trace: Trace {
                deployment: Some(d),
                attempts: self.attempts,
                failed_over: self.failed_over,
                skipped: self.skipped,
                limited: self.limited,
                hedged: self.hedged,
            },
        }
    }

    fn failed<T>(mut self) -> Outcome<T> {
        let (err, dep) = match (self.last.take(), self.soonest.take()) {
            (Some((e, d)), _) => (e, Some(d)),
            (None, Some((over, d))) => (upstream_limited(&over, &d), Some(d)),
            (None, None) => (
                GatewayError::service_unavailable("No deployment is available for this model."),
                None,
            ),
        };
        if !self.failed_over.is_empty()
            && self.failed_over.last() == dep.as_ref().map(Deployment::label).as_ref()
        {
            self.failed_over.pop();
        }
        Outcome {
            result: Err(err),
            trace: Trace {
                deployment: dep,
                attempts: self.attempts,
                failed_over: self.failed_over,
                skipped: self.skipped,
                limited: self.limited,
                hedged: self.hedged,
            },
        }
    }
}

/// 429 when every deployment left was at its provider's configured rate
/// limit: when to come back (the soonest room), and which limit.
fn upstream_limited(over: &crate::window::Over, d: &Deployment) -> GatewayError {
    use crate::window::Over;
    let (rpm, tpm) = d.upstream.limits(&d.model);
    let (kind, what, limit, used) = match *over {
        Over::Requests { used, .. } => ("requests", "requests per min (RPM)", rpm, used),
        Over::Tokens { used, .. } => ("tokens", "tokens per min (TPM)", tpm, used),
    };
    let wait = over.wait();
    GatewayError::rate_limited(
        kind,
        format!(
            "Rate limit reached for {} on {what}, the limit this gateway keeps to for provider `{}`: Limit {}, Used {used}. Please try again in {}.",
            d.label(),
            d.upstream.name,
            limit.unwrap_or(0),
            crate::keys::reset_text(wait)
        ),
        wait,
    )
}

/// How long a hedged plan waits for the first deployment's first byte.
fn hedge_delay(plan: &Plan, first: &Deployment) -> Option<Duration> {
    match plan.hedge? {
        Hedge::After(d) => Some(d),
        Hedge::P95 => first.stats.ttft_p95(),
    }
}

/// Runs `once` over the plan: breaker admission, retries, failover, and
/// (for hedged routes) a second attempt racing the first. `complete` says
/// whether a successful attempt is the whole answer (unary) or its start.
pub async fn attempt_loop<T, F, Fut>(
    app: &AppState,
    plan: &Plan,
    complete: bool,
    mut once: F,
) -> Outcome<T>
where
    F: FnMut(Deployment, InFlight) -> Fut,
    Fut: std::future::Future<Output = Result<T, GatewayError>>,
{
    app.retry_budget.on_request(Instant::now());
    let mut st = Attempts {
        app,
        ds: &plan.deployments,
        complete,
        attempts: 0,
        failed_over: Vec::new(),
        skipped: Vec::new(),
        limited: Vec::new(),
        soonest: None,
        last: None,
        hedged: false,
        fail_open: false,
        stopped: false,
    };
    let (mut at, mut retry, mut pause) = (0, 0, None);
    // A deployment the breaker already admitted (admission is asked once per
    // attempt: a half-open circuit admits one probe).
    let mut admitted = None;

    // A hedged start: the first admitted deployment, and after the delay a
    // second one racing it; the first answer wins and the other is dropped
    // (which cancels its upstream request).
    let first = match plan.hedge {
        Some(_) => st.next_admitted(0).await,
        None => None,
    };
    if let Some(a) = first {
        admitted = Some(a);
        at = a;
        if let Some(delay) = hedge_delay(plan, &st.ds[a]).filter(|_| a + 1 < st.ds.len()) {
            admitted = None;
            let da = st.ds[a].clone();
            st.attempts += 1;
            let started_a = Instant::now();
            let mut fa = Box::pin(once(da.clone(), da.stats.enter()));
            let first = tokio::select! {
                r = &mut fa => Some(r),
                _ = tokio::time::sleep(delay) => None,
            };
            let flow = match first {
                Some(r) => st.settle(a, 0, started_a, r),
                None => {
                    let b = st.next_admitted(a + 1).await;
                    match b.filter(|_| app.retry_budget.try_spend(Instant::now())) {
                        None => {
                            let r = fa.await;
                            st.settle(a, 0, started_a, r)
                        }
                        Some(b) => {
                            let db = st.ds[b].clone();
                            tracing::debug!(first = %da.label(), hedge = %db.label(), after = ?delay, "no first byte yet; hedging");
                            st.attempts += 1;
                            st.hedged = true;
                            let started_b = Instant::now();
                            let fb = Box::pin(once(db.clone(), db.stats.enter()));
                            let (won, (lost_at, lost_started, lost)) =
                                match futures::future::select(fa, fb).await {
                                    Either::Left((ra, fb)) => {
                                        ((a, started_a, ra), (b, started_b, Either::Right(fb)))
                                    }
                                    Either::Right((rb, fa)) => {
                                        ((b, started_b, rb), (a, started_a, Either::Left(fa)))
                                    }
                                };
                            match st.settle(won.0, 0, won.1, won.2) {
                                Flow::Done(v) => return st.done(v, won.0),
                                Flow::Stop => return st.failed(),
                                Flow::Resume { .. } => {}
                            }
                            let r = match lost {
                                Either::Left(f) | Either::Right(f) => f.await,
                            };
                            match st.settle(lost_at, 0, lost_started, r) {
                                Flow::Done(v) => return st.done(v, lost_at),
                                Flow::Stop => return st.failed(),
                                Flow::Resume { .. } => {}
                            }
                            // Both failed: no retries on either; on with the rest.
                            for i in [a, b] {
                                let l = st.ds[i].label();
                                if !st.failed_over.contains(&l) {
                                    st.failed_over.push(l);
                                }
                            }
                            Flow::Resume {
                                at: b + 1,
                                retry: 0,
                                pause: None,
                            }
                        }
                    }
                }
            };
            match flow {
                Flow::Done(v) => return st.done(v, a),
                Flow::Stop => return st.failed(),
                Flow::Resume {
                    at: x,
                    retry: r,
                    pause: p,
                } => (at, retry, pause) = (x, r, p),
            }
        }
    }

    loop {
        while at < st.ds.len() {
            if let Some(p) = pause.take() {
                tokio::time::sleep(p).await;
            }
            if admitted.take() != Some(at) && !st.admit(at).await {
                at += 1;
                retry = 0;
                continue;
            }
            let d = st.ds[at].clone();
            st.attempts += 1;
            let started = Instant::now();
            let r = once(d.clone(), d.stats.enter()).await;
            match st.settle(at, retry, started, r) {
                Flow::Done(v) => return st.done(v, at),
                Flow::Stop => {
                    st.stopped = true;
                    break;
                }
                Flow::Resume {
                    at: x,
                    retry: r,
                    pause: p,
                } => (at, retry, pause) = (x, r, p),
            }
        }
        // The breaker sheds load from a failing deployment while another can
        // serve; it never turns a model into a hard outage. When nothing it
        // admitted answered, the deployments it skipped are tried after all.
        if st.stopped || st.skipped.is_empty() || st.fail_open {
            break;
        }
        tracing::debug!(skipped = ?st.skipped, "no admitted deployment answered; trying the open circuits");
        st.fail_open = true;
        (at, retry, pause) = (0, 0, None);
    }
    st.failed()
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

pub(crate) fn transport_error(d: &Deployment, f: Failure) -> GatewayError {
    GatewayError::upstream_unreachable(&d.upstream.name, f.detail())
}

pub(crate) async fn upstream_error(
    d: &Deployment,
    resp: http::Response<UpstreamBody>,
) -> GatewayError {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let wait = retry_after_ms(resp.headers()).or_else(|| retry_after(resp.headers()));
    let (parts, body) = resp.into_parts();
    let body = read_body(body).await.unwrap_or_default();
    let mut e =
        d.upstream
            .protocol
            .error_with_headers(&d.upstream.name, status, &parts.headers, &body);
    e.retry_after = wait;
    redact(context_overflow(e), d)
}

fn redact(e: GatewayError, d: &Deployment) -> GatewayError {
    d.upstream.secrets().fold(e, GatewayError::redact)
}

/// `work` for `d`, or its timeout error once `limit` has passed.
pub(crate) async fn within<T>(
    d: &Deployment,
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, GatewayError>>,
) -> Result<T, GatewayError> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err(GatewayError::upstream_timeout(&d.upstream.name, limit)))
}

/// Builds the upstream request for `d` and sends it: the answer's head, and
/// the parameters dropped under `drop_params`.
async fn send(
    app: &AppState,
    d: &Deployment,
    endpoint: Endpoint,
    body: &RequestBody,
    stream: bool,
) -> Result<(http::Response<UpstreamBody>, Vec<String>), GatewayError> {
    let drop = d.upstream.drop_params || body.flag("drop_params");
    send_with(app, d, drop, |target| {
        d.upstream
            .protocol_for(endpoint, &d.model)
            .build_from(endpoint, body, stream, target)
            .map_err(|mut e| {
                // What this protocol cannot carry; another deployment may.
                if e.source == ErrorSource::Client {
                    e.source = ErrorSource::Translation;
                }
                e
            })
    })
    .await
}

/// Sends the request `build` makes for `d`'s target (its credential, URL
/// and configured headers): the answer's head, once the upstream's rate
/// limit headers are noted; an upstream's error answer is the error.
pub(crate) async fn send_with(
    app: &AppState,
    d: &Deployment,
    drop: bool,
    build: impl FnOnce(&polyplex_providers::Target<'_>) -> Result<UpstreamRequest, GatewayError>,
) -> Result<(http::Response<UpstreamBody>, Vec<String>), GatewayError> {
    let catalog = app.catalog();
    let bearer = d.upstream.bearer().await?;
    let mut target = d.upstream.target(catalog, &d.model, drop);
    if bearer.is_some() {
        target.credential = bearer.as_ref();
    }
    let req = build(&target)?;
    crate::phase::mark("built");
    if !req.dropped.is_empty() {
        tracing::debug!(deployment = %d.label(), dropped = ?req.dropped, "parameters dropped (drop_params)");
    }
    let uri = app
        .urls
        .get(&req.url)
        .map_err(|_| GatewayError::internal("invalid upstream URL"))?;
    crate::phase::mark("send");
    let resp = app
        .client()
        .send(http::Method::POST, uri, req.headers, req.body)
        .await
        .map_err(|f| transport_error(d, f))?;
    d.stats.observe_limits(Instant::now(), resp.headers());
    if !resp.status().is_success() {
        return Err(upstream_error(d, resp).await);
    }
    Ok((resp, req.dropped))
}

/// [`send_with`] without dropping parameters, and the whole answer read.
async fn send_read(
    app: &AppState,
    d: &Deployment,
    build: impl FnOnce(&polyplex_providers::Target<'_>) -> Result<UpstreamRequest, GatewayError>,
) -> Result<Bytes, GatewayError> {
    let (resp, _) = send_with(app, d, false, build).await?;
    read_body(resp.into_body())
        .await
        .map_err(|f| transport_error(d, f))
}

/// Reads an upstream stream up to its first events, each passed through
/// `each` (which may unwrap it, or fail the attempt with the error it is).
async fn first_events(
    d: &Deployment,
    body: &mut BoxStream<'static, Result<Bytes, hyper::Error>>,
    parser: &mut Parser,
    mut each: impl FnMut(sse::Event) -> Result<sse::Event, GatewayError>,
) -> Result<Vec<sse::Event>, GatewayError> {
    let mut events = Vec::new();
    while events.is_empty() {
        match body.next().await {
            Some(Ok(bytes)) => {
                let mut framed = Vec::new();
                parser.feed(&bytes, &mut framed);
                for ev in framed {
                    events.push(each(ev).map_err(|e| redact(e, d))?);
                }
            }
            Some(Err(_)) => return Err(transport_error(d, Failure::Broken)),
            None => {
                return Err(GatewayError::upstream_bad_response(
                    &d.upstream.name,
                    "the stream ended before its first event",
                ))
            }
        }
    }
    Ok(events)
}

/// Whether `d` takes a client's own Messages request ([`Native`]): it is
/// Anthropic's API, or Claude on Vertex AI or Bedrock.
pub fn speaks_messages(d: &Deployment) -> bool {
    d.upstream
        .protocol_for(Endpoint::Chat, &d.model)
        .carries_messages(&d.model, false)
}

/// Whether `d` counts a Messages request's tokens itself.
pub fn counts_messages(d: &Deployment) -> bool {
    d.upstream
        .protocol_for(Endpoint::Chat, &d.model)
        .carries_messages(&d.model, true)
}

/// What builds `call` of a client's own Messages request for `d`.
fn messages_build<'a>(
    d: &'a Deployment,
    native: &'a Native,
    call: MessagesCall,
) -> impl FnOnce(&polyplex_providers::Target<'_>) -> Result<UpstreamRequest, GatewayError> + 'a {
    move |target| {
        d.upstream
            .protocol_for(Endpoint::Chat, &d.model)
            .messages_request(native, call, target)
    }
}

/// A Messages answer as its upstream gave it, and what it reads as in
/// chat's shape (for its usage record).
pub struct NativeUnary {
    pub bytes: Bytes,
    pub reply: Reply,
    pub usage: Option<Usage>,
}

/// One non-streamed attempt of a Messages request passed through
/// ([`speaks_messages`]); `chat` is the same request in chat's shape.
pub async fn native_unary_once(
    app: &AppState,
    d: &Deployment,
    _in_flight: InFlight,
    native: &Native,
    chat: &RequestBody,
) -> Result<NativeUnary, GatewayError> {
    let timeout = d.upstream.timeout;
    let fut = async {
        let bytes = send_read(
            app,
            d,
            messages_build(d, native, MessagesCall::Create { stream: false }),
        )
        .await?;
        let (reply, usage) = Anthropic
            .parse_reply(Endpoint::Chat, &d.upstream.name, chat, &bytes)
            .map_err(|e| redact(e, d))?;
        Ok(NativeUnary {
            bytes,
            reply,
            usage,
        })
    };
    within(d, timeout, fut).await
}

/// A `count_tokens` request passed through to `d`: its answer's body.
pub async fn native_count(
    app: &AppState,
    d: &Deployment,
    native: &Native,
) -> Result<Bytes, GatewayError> {
    let timeout = d.upstream.timeout;
    let fut = async {
        let body = send_read(app, d, messages_build(d, native, MessagesCall::Count)).await?;
        d.upstream
            .protocol_for(Endpoint::Chat, &d.model)
            .messages_count_answer(&d.upstream.name, body)
            .map_err(|e| redact(e, d))
    };
    within(d, timeout, fut).await
}

/// One attempt of a rerank on `d`: its answer, read.
pub async fn rerank_once(
    app: &AppState,
    d: &Deployment,
    _in_flight: InFlight,
    call: &polyplex_providers::rerank::RerankCall<'_>,
) -> Result<polyplex_providers::rerank::Ranked, GatewayError> {
    let fut = async {
        let protocol = d.upstream.protocol_for(Endpoint::Embeddings, &d.model);
        let bytes = send_read(app, d, |target| protocol.rerank_request(call, target)).await?;
        protocol
            .rerank_answer(
                &d.upstream.name,
                &d.model,
                &bytes,
                call.meta.documents.len(),
            )
            .map_err(|e| redact(e, d))
    };
    within(d, d.upstream.timeout, fut).await
}

/// Whether `d` takes a client's own Gemini `generateContent` request as
/// it is: Gemini's API, or a Gemini model on Vertex AI.
pub fn speaks_generate(d: &Deployment) -> bool {
    d.upstream
        .protocol_for(Endpoint::Chat, &d.model)
        .carries_generate(&d.model)
}

/// One non-streamed attempt of a Gemini request passed through
/// ([`speaks_generate`]): the answer's body as the upstream gave it.
pub async fn generate_unary_once(
    app: &AppState,
    d: &Deployment,
    _in_flight: InFlight,
    body: &Bytes,
) -> Result<Bytes, GatewayError> {
    let protocol = d.upstream.protocol_for(Endpoint::Chat, &d.model);
    let fut = send_read(app, d, |target| {
        protocol.generate_request(body.clone(), false, target)
    });
    within(d, d.upstream.timeout, fut).await
}

/// A Gemini `countTokens` request passed through to `d`: its answer's body.
pub async fn generate_count(
    app: &AppState,
    d: &Deployment,
    body: &polyplex_types::JsonMap,
) -> Result<Bytes, GatewayError> {
    let protocol = d.upstream.protocol_for(Endpoint::Chat, &d.model);
    let fut = send_read(app, d, |target| {
        protocol.generate_count_request(body, target)
    });
    within(d, d.upstream.timeout, fut).await
}

/// A passed-through Gemini stream whose first event has arrived.
pub struct GenerateOpen {
    pub body: BoxStream<'static, Result<Bytes, hyper::Error>>,
    pub parser: Parser,
    /// Events read so far, still to be relayed (the first is no error).
    pub events: Vec<sse::Event>,
    pub first_byte_at: Instant,
    /// Counts the stream in its deployment's in-flight number until it ends.
    pub in_flight: InFlight,
}

/// One streamed attempt of a Gemini request passed through, up to its
/// first event; an error event first fails the attempt (the client has
/// had nothing yet).
pub async fn generate_stream_once(
    app: &AppState,
    d: &Deployment,
    in_flight: InFlight,
    body: &Bytes,
) -> Result<GenerateOpen, GatewayError> {
    let fut = async {
        let protocol = d.upstream.protocol_for(Endpoint::Chat, &d.model);
        let (resp, _) = send_with(app, d, false, |target| {
            protocol.generate_request(body.clone(), true, target)
        })
        .await?;
        let mut stream = resp.into_body().into_data_stream().boxed();
        let mut parser = protocol.stream_parser();
        let events = first_events(d, &mut stream, &mut parser, Ok).await?;
        if let Some(e) = stream_error_of(&events[0].data) {
            let status = e["code"]
                .as_u64()
                .and_then(|c| StatusCode::from_u16(c as u16).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            let body = serde_json::json!({ "error": e }).to_string();
            return Err(redact(
                protocol.error(&d.upstream.name, status, body.as_bytes()),
                d,
            ));
        }
        Ok(GenerateOpen {
            body: stream,
            parser,
            events,
            first_byte_at: Instant::now(),
            in_flight,
        })
    };
    within(d, d.upstream.first_byte_timeout, fut).await
}

/// The `error` object of a Gemini stream event that is one.
pub fn stream_error_of(data: &str) -> Option<serde_json::Value> {
    if !data.contains("\"error\"") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(data).ok()?;
    v.get("error").filter(|e| e.is_object()).cloned()
}

/// A passed-through Messages stream whose first event has arrived: the
/// events read so far, still to be relayed (a decoder of its own reads
/// them for their usage; an `error` first has failed the attempt), each
/// as Anthropic's API sends it ([`polyplex_providers::Protocol::messages_event`]).
pub struct NativeOpen {
    pub stream: OpenStream,
    pub events: Vec<sse::Event>,
}

/// One streamed attempt of a Messages request passed through, up to its
/// first event.
pub async fn native_stream_once(
    app: &AppState,
    d: &Deployment,
    in_flight: InFlight,
    native: &Native,
    chat: &RequestBody,
) -> Result<NativeOpen, GatewayError> {
    let limit = d.upstream.first_byte_timeout;
    let fut = async {
        let build = messages_build(d, native, MessagesCall::Create { stream: true });
        let (resp, _) = send_with(app, d, false, build).await?;
        let mut body = resp.into_body().into_data_stream().boxed();
        let protocol = d.upstream.protocol_for(Endpoint::Chat, &d.model);
        let mut parser = protocol.stream_parser();
        let decoder = || Anthropic.stream_decoder(Endpoint::Chat, &d.upstream.name, &d.model, chat);
        let events = first_events(d, &mut body, &mut parser, |ev| {
            protocol.messages_event(&d.upstream.name, ev)
        })
        .await?;
        // An upstream that fails at once (an `error` event first) fails
        // the attempt: the client has had nothing yet.
        let mut first = decoder();
        for ev in &events {
            first
                .on_event(ev, &mut Vec::new())
                .map_err(|e| redact(e, d))?;
        }
        Ok(NativeOpen {
            stream: OpenStream {
                body,
                parser,
                decoder: decoder(),
                pending: Vec::new(),
                idle_timeout: d.upstream.idle_timeout,
                first_byte_at: Instant::now(),
                dropped: Vec::new(),
                in_flight,
                prompts: 1,
            },
            events,
        })
    };
    within(d, limit, fut).await
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
    _in_flight: InFlight,
    endpoint: Endpoint,
    body: &RequestBody,
) -> Result<Unary, GatewayError> {
    let timeout = d.upstream.timeout;
    let once = || async {
        if let Some(parts) = parts_of(d, endpoint, body, false) {
            return answer_in_parts(app, d, endpoint, parts.bodies).await;
        }
        let (response, usage, dropped) = call(app, d, endpoint, body).await?;
        Ok(Unary {
            response,
            usage,
            dropped,
        })
    };
    let fut = async {
        let first = once().await;
        match first {
            Err(e) if d.upstream.learn_completions_via_chat(endpoint, &e) => {
                through_chat_after(d, e, once().await)
            }
            r => r,
        }
    };
    within(d, timeout, fut).await
}

/// The answer through chat to a completions request that `d`'s completions
/// endpoint refused with `e` (404 or 405: no such endpoint, as polyplex
/// had only guessed there was): kept as the way there if chat answers,
/// else `e` stands and the guess with it.
fn through_chat_after<T>(
    d: &Deployment,
    e: GatewayError,
    answer: Result<T, GatewayError>,
) -> Result<T, GatewayError> {
    match answer {
        Ok(a) => {
            tracing::info!(provider = %d.upstream.name, status = e.status.as_u16(), "the provider's API has no completions endpoint; its completions go through its chat API from now on");
            Ok(a)
        }
        Err(_) => {
            d.upstream.unlearn_completions_via_chat();
            Err(e)
        }
    }
}

/// The parts `body` goes in to `d` when its upstream takes less per
/// request than the body asks ([`polyplex_providers::split_request`]).
fn parts_of(
    d: &Deployment,
    endpoint: Endpoint,
    body: &RequestBody,
    stream: bool,
) -> Option<polyplex_providers::Parts> {
    // The common case decided without a lookup of the protocol's limits.
    if endpoint == Endpoint::Chat && body.n() <= 1 {
        return None;
    }
    let protocol = d.upstream.protocol_for(endpoint, &d.model);
    polyplex_providers::split_request(protocol, endpoint, &d.model, body.map(), body.n(), stream)
}

/// One upstream request and its parsed answer.
async fn call(
    app: &AppState,
    d: &Deployment,
    endpoint: Endpoint,
    body: &RequestBody,
) -> Result<(Reply, Option<Usage>, Vec<String>), GatewayError> {
    let (resp, dropped) = send(app, d, endpoint, body, false).await?;
    let bytes = read_body(resp.into_body())
        .await
        .map_err(|f| transport_error(d, f))?;
    let (response, usage) = d
        .upstream
        .protocol_for(endpoint, &d.model)
        .parse_reply(endpoint, &d.upstream.name, body, &bytes)
        .map_err(|e| redact(e, d))?;
    Ok((response, usage, dropped))
}

/// How many parts of one request are in flight at once.
const PARTS_AT_ONCE: usize = 8;

/// A request whose upstream takes fewer inputs per request than the
/// client sent — embeddings to Bedrock's Titan models (one text), several
/// completions prompts to a chat API (one prompt): the parts go a few at a
/// time, and their answers are joined in input order. A part that fails
/// fails the attempt (which may then retry or fail over as a whole).
async fn answer_in_parts(
    app: &AppState,
    d: &Deployment,
    endpoint: Endpoint,
    parts: Vec<polyplex_types::JsonMap>,
) -> Result<Unary, GatewayError> {
    use futures::TryStreamExt;
    let answers: Vec<_> = futures::stream::iter(parts)
        .map(|part| async move { call(app, d, endpoint, &RequestBody::from_map(part)).await })
        .buffered(PARTS_AT_ONCE)
        .try_collect()
        .await?;
    let (joined, dropped) = first_dropped(
        answers
            .into_iter()
            .map(|(reply, usage, dropped)| ((reply, usage), dropped))
            .collect(),
    );
    let (response, usage) = if endpoint == Endpoint::Embeddings {
        polyplex_providers::join_embeddings(joined)
    } else {
        polyplex_providers::join_choices(joined)
    };
    Ok(Unary {
        response,
        usage,
        dropped,
    })
}

/// An upstream stream whose first chunk has arrived.
pub struct OpenStream {
    pub body: BoxStream<'static, Result<Bytes, hyper::Error>>,
    pub parser: Parser,
    pub decoder: Box<dyn StreamDecoder>,
    /// Items decoded so far (at least one chunk).
    pub pending: Vec<StreamItem>,
    pub idle_timeout: Duration,
    pub first_byte_at: Instant,
    /// Parameters dropped under `drop_params`.
    pub dropped: Vec<String>,
    /// Counts the stream in its deployment's in-flight number until it ends.
    pub in_flight: InFlight,
    /// How many times the upstreams were sent the prompt (`n` when the
    /// choices were asked apart, else 1): for a count of the tokens when
    /// none were reported.
    pub prompts: u64,
}

/// One streamed attempt, up to and including the first chunk: of each
/// choice's stream when the provider gives one choice a request and the
/// client asked for several ([`crate::apart`]).
pub async fn stream_once(
    app: &AppState,
    d: &Deployment,
    in_flight: InFlight,
    endpoint: Endpoint,
    body: &RequestBody,
) -> Result<OpenStream, GatewayError> {
    let limit = d.upstream.first_byte_timeout;
    let fut = async {
        let once = || async {
            let apart = parts_of(d, endpoint, body, true);
            // Each choice asked apart carries the prompt once more.
            let prompts = match &apart {
                Some(p) if p.choices_each == 1 => body.n().max(1),
                _ => 1,
            };
            let (first, dropped) = match apart {
                None => open_stream(app, d, endpoint, body).await?,
                Some(parts) => open_apart(app, d, endpoint, parts).await?,
            };
            Ok((first, dropped, prompts))
        };
        let (first, dropped, prompts) = match once().await {
            Err(e) if d.upstream.learn_completions_via_chat(endpoint, &e) => {
                through_chat_after(d, e, once().await)?
            }
            r => r?,
        };
        Ok(OpenStream {
            body: first.body,
            parser: first.parser,
            decoder: first.decoder,
            pending: first.pending,
            idle_timeout: d.upstream.idle_timeout,
            first_byte_at: Instant::now(),
            dropped,
            in_flight,
            prompts,
        })
    };
    within(d, limit, fut).await
}

/// Each part's stream opened (all of them, or the first failure), merged
/// into one ([`crate::apart`]).
async fn open_apart(
    app: &AppState,
    d: &Deployment,
    endpoint: Endpoint,
    parts: polyplex_providers::Parts,
) -> Result<(crate::apart::Part, Vec<String>), GatewayError> {
    let requests = parts.bodies.clone();
    let opened = futures::future::try_join_all(
        parts
            .bodies
            .into_iter()
            .map(|p| open_stream_owned(app, d, endpoint, RequestBody::from_map(p))),
    )
    .await?;
    let (streams, dropped) = first_dropped(opened);
    let merged = crate::apart::merge(
        streams,
        endpoint,
        parts.choices_each,
        &d.upstream.name,
        requests,
    )
    .await
    .map_err(|e| redact(e, d))?;
    Ok((merged, dropped))
}

/// The parts' answers, and the parameters dropped from them (the same
/// for every part: the first part's list that names any).
fn first_dropped<T>(answers: Vec<(T, Vec<String>)>) -> (Vec<T>, Vec<String>) {
    let mut dropped = Vec::new();
    let mut all = Vec::with_capacity(answers.len());
    for (answer, part_dropped) in answers {
        if dropped.is_empty() {
            dropped = part_dropped;
        }
        all.push(answer);
    }
    (all, dropped)
}

async fn open_stream_owned(
    app: &AppState,
    d: &Deployment,
    endpoint: Endpoint,
    body: RequestBody,
) -> Result<(crate::apart::Part, Vec<String>), GatewayError> {
    open_stream(app, d, endpoint, &body).await
}

/// Sends a streamed request and reads its answer up to the first chunk.
async fn open_stream(
    app: &AppState,
    d: &Deployment,
    endpoint: Endpoint,
    body: &RequestBody,
) -> Result<(crate::apart::Part, Vec<String>), GatewayError> {
    let (resp, dropped) = send(app, d, endpoint, body, true).await?;
    crate::phase::mark("hdrs");
    let mut upstream = resp.into_body().into_data_stream().boxed();
    let mut parser = d.upstream.protocol.stream_parser();
    let mut decoder = d.upstream.protocol_for(endpoint, &d.model).stream_decoder(
        endpoint,
        &d.upstream.name,
        &d.model,
        body,
    );
    let mut events: Vec<sse::Event> = Vec::new();
    let mut pending = Vec::new();
    loop {
        match upstream.next().await {
            Some(Ok(bytes)) => {
                crate::phase::mark("chunk");
                parser.feed(&bytes, &mut events);
                for ev in events.drain(..) {
                    decoder
                        .on_event(&ev, &mut pending)
                        .map_err(|e| redact(e, d))?;
                }
                if !pending.is_empty() {
                    let part = crate::apart::Part {
                        body: upstream,
                        parser,
                        decoder,
                        pending,
                    };
                    return Ok((part, dropped));
                }
            }
            Some(Err(_)) => return Err(transport_error(d, Failure::Broken)),
            None => {
                decoder.finish(&mut pending).map_err(|e| redact(e, d))?;
                return Err(GatewayError::upstream_bad_response(
                    &d.upstream.name,
                    "the stream ended before its first chunk",
                ));
            }
        }
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

    fn upstream(status: u16, retryable: bool) -> GatewayError {
        let mut e = GatewayError::upstream(
            StatusCode::from_u16(status).unwrap(),
            "server_error",
            "boom",
        );
        e.retryable = retryable;
        e
    }

    #[test]
    fn judge_retries_fails_over_or_stops() {
        let now = Instant::now();
        let budget = RetryBudget::new(0.0, 0.0, now);
        let mut rng = rand::thread_rng();
        // Retryable, retries left, budget left: retry with backoff.
        assert!(matches!(
            judge(&upstream(503, true), 2, 0, &budget, now, &mut rng),
            Next::Retry(d) if d <= BACKOFF_BASE
        ));
        // retry-after is honoured as the pause...
        let mut e = upstream(429, true);
        e.retry_after = Some(Duration::from_millis(1500));
        assert_eq!(
            judge(&e, 2, 0, &budget, now, &mut rng),
            Next::Retry(Duration::from_millis(1500))
        );
        // ... unless it is longer than polyplex waits: fail over instead.
        e.retry_after = Some(Duration::from_secs(60));
        assert_eq!(judge(&e, 2, 0, &budget, now, &mut rng), Next::FailOver);
        // Out of retries on this provider: fail over.
        assert_eq!(
            judge(&upstream(500, true), 2, 2, &budget, now, &mut rng),
            Next::FailOver
        );
        // Wrong key or unknown model *there*: another provider may serve it.
        for s in [401, 403, 404] {
            assert_eq!(
                judge(&upstream(s, false), 2, 0, &budget, now, &mut rng),
                Next::FailOver
            );
        }
        // A client's own 4xx is never retried nor failed over.
        assert_eq!(
            judge(
                &GatewayError::invalid_request("bad"),
                2,
                0,
                &budget,
                now,
                &mut rng
            ),
            Next::Stop
        );
        assert_eq!(
            judge(&upstream(400, false), 2, 0, &budget, now, &mut rng),
            Next::Stop
        );
        // What this deployment's protocol cannot carry: the next may.
        let mut refused = GatewayError::invalid_param("n", "not on this protocol");
        refused.source = ErrorSource::Translation;
        assert_eq!(
            judge(&refused, 2, 0, &budget, now, &mut rng),
            Next::FailOver
        );
        assert!(!counts_against(&refused));
        // An empty budget turns retries into failovers.
        while budget.try_spend(now) {}
        assert_eq!(
            judge(&upstream(503, true), 2, 0, &budget, now, &mut rng),
            Next::FailOver
        );
    }

    #[test]
    fn a_prompt_too_long_for_the_model_fails_over_with_openais_code() {
        let now = Instant::now();
        let budget = RetryBudget::new(0.0, 0.0, now);
        let mut rng = rand::thread_rng();
        let said = |status: u16, message: &str| {
            context_overflow(GatewayError::upstream(
                StatusCode::from_u16(status).unwrap(),
                "invalid_request_error",
                message,
            ))
        };
        for words in [
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 tokens. Please reduce the length of the messages.",
            "prompt is too long: 208310 tokens > 200000 maximum",
            "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            "Input is too long for requested model.",
            "too many tokens: total number of tokens in the prompt cannot exceed 128000",
        ] {
            let e = said(400, words);
            assert_eq!(e.code.as_deref(), Some(CONTEXT), "{words}");
            assert_eq!(judge(&e, 2, 0, &budget, now, &mut rng), Next::FailOver);
            assert!(!counts_against(&e));
        }
        // An output cap, or a 400 of another kind, is the client's own.
        for (status, words) in [
            (
                400,
                "max_tokens: 10000 > 4096, which is the maximum allowed number of output tokens",
            ),
            (400, "messages: text content blocks must be non-empty"),
            (500, "prompt is too long"),
        ] {
            let e = said(status, words);
            assert_eq!(e.code, None, "{words}");
        }
        assert_eq!(
            judge(
                &said(400, "messages: roles must alternate"),
                2,
                0,
                &budget,
                now,
                &mut rng
            ),
            Next::Stop
        );
    }

    #[test]
    fn what_counts_against_a_deployment() {
        assert!(counts_against(&upstream(500, true)));
        assert!(counts_against(&upstream(502, false)));
        assert!(counts_against(&upstream(429, true)));
        assert!(!counts_against(&upstream(400, false)));
        assert!(!counts_against(&upstream(401, false)));
        assert!(!counts_against(&GatewayError::invalid_request("bad")));
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
