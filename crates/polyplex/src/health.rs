//! Live statistics per deployment (provider + model) that routing reads:
//! decaying averages of time to first token, total latency and output
//! tokens/s; the in-flight count; a circuit breaker over a sliding window of
//! outcomes; what the upstream's rate-limit headers say is left; and this
//! node's count against the provider's configured `rpm` / `tpm`.
//! Also the gateway-wide retry budget.
//!
//! Every method that depends on time takes `now`, so tests drive the clock.

use crate::window::{Over, Window};
use http::{HeaderMap, HeaderName};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Circuit breaker and averaging settings (`[routing]` in the config).
#[derive(Debug, Clone, Copy)]
pub struct HealthConfig {
    /// Outcomes older than this do not count toward the error ratio.
    pub window: Duration,
    /// Fewer outcomes than this in the window never open the circuit.
    pub min_requests: u32,
    /// Error ratio in the window at or above which the circuit opens.
    pub error_ratio: f64,
    /// How long an open circuit skips the deployment before one probe.
    pub cooldown: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            window: Duration::from_secs(30),
            min_requests: 5,
            error_ratio: 0.5,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// Weight of a new sample in the decaying averages.
const ALPHA: f64 = 0.3;
/// TTFT samples kept for the p95 a hedge may wait for.
const TTFT_SAMPLES: usize = 100;
/// Samples needed before the p95 is trusted.
pub const P95_MIN_SAMPLES: usize = 20;
const MAX_OUTCOMES: usize = 4096;
/// How long a rate-limit reading holds when the upstream gave no reset time.
const DEFAULT_RESET: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Circuit {
    Closed,
    Open {
        until: Instant,
    },
    /// One probe is out since `since`; others wait for its answer.
    HalfOpen {
        since: Instant,
    },
}

impl Circuit {
    pub fn name(&self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open { .. } => "open",
            Circuit::HalfOpen { .. } => "half_open",
        }
    }
}

/// What the breaker says about sending one more request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Yes,
    /// Yes, as the half-open circuit's single probe.
    Probe,
    /// No: skipped until then.
    No(Instant),
}

#[derive(Debug, Default, Clone, Copy)]
struct Ewma(Option<f64>);

impl Ewma {
    fn add(&mut self, x: f64) {
        self.0 = Some(match self.0 {
            Some(v) => v + ALPHA * (x - v),
            None => x,
        });
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Left {
    remaining: u64,
    until: Option<Instant>,
}

/// The outcomes inside the breaker's window, with a running count of the
/// failures among them (the check after every outcome is O(1)).
#[derive(Debug, Default)]
struct Outcomes {
    list: VecDeque<(Instant, bool)>,
    bad: usize,
}

impl Outcomes {
    fn push(&mut self, now: Instant, ok: bool, window: Duration) {
        if self.list.len() == MAX_OUTCOMES {
            self.pop();
        }
        self.list.push_back((now, ok));
        if !ok {
            self.bad += 1;
        }
        while self
            .list
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > window)
        {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some((_, false)) = self.list.pop_front() {
            self.bad = self.bad.saturating_sub(1);
        }
    }

    fn clear(&mut self) {
        self.list.clear();
        self.bad = 0;
    }
}

#[derive(Debug)]
struct Inner {
    ttft_ms: Ewma,
    latency_ms: Ewma,
    tokens_per_s: Ewma,
    ttfts: VecDeque<f64>,
    outcomes: Outcomes,
    circuit: Circuit,
    requests: u64,
    errors: u64,
    requests_left: Option<Left>,
    tokens_left: Option<Left>,
    /// A 429 said to come back then.
    blocked_until: Option<Instant>,
    last_error: Option<String>,
}

/// One deployment's statistics; shared by every request routed to it.
#[derive(Debug)]
pub struct DeploymentStats {
    in_flight: AtomicU32,
    inner: Mutex<Inner>,
    /// This node's count against the provider's configured `rpm` / `tpm`.
    upstream_limits: Mutex<Window>,
}

impl Default for DeploymentStats {
    fn default() -> Self {
        DeploymentStats {
            in_flight: AtomicU32::new(0),
            inner: Mutex::new(Inner {
                ttft_ms: Ewma::default(),
                latency_ms: Ewma::default(),
                tokens_per_s: Ewma::default(),
                ttfts: VecDeque::new(),
                outcomes: Outcomes::default(),
                circuit: Circuit::Closed,
                requests: 0,
                errors: 0,
                requests_left: None,
                tokens_left: None,
                blocked_until: None,
                last_error: None,
            }),
            upstream_limits: Mutex::new(Window::default()),
        }
    }
}

/// Counts a request in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<DeploymentStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl DeploymentStats {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave these numbers unusable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn admit(&self, cfg: &HealthConfig, now: Instant) -> Admission {
        let mut g = self.lock();
        match g.circuit {
            Circuit::Closed => Admission::Yes,
            Circuit::Open { until } if now < until => Admission::No(until),
            Circuit::Open { .. } => {
                g.circuit = Circuit::HalfOpen { since: now };
                Admission::Probe
            }
            // A probe that never reported (its client went away) is replaced
            // after a cooldown.
            Circuit::HalfOpen { since } if now >= since + cfg.cooldown => {
                g.circuit = Circuit::HalfOpen { since: now };
                Admission::Probe
            }
            Circuit::HalfOpen { since } => Admission::No(since + cfg.cooldown),
        }
    }

    pub fn circuit(&self) -> Circuit {
        self.lock().circuit
    }

    /// The last failure's description, if any.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// Counts one outcome; true when it opened a closed circuit.
    fn outcome(g: &mut Inner, cfg: &HealthConfig, now: Instant, ok: bool) -> bool {
        g.requests += 1;
        if !ok {
            g.errors += 1;
        }
        match g.circuit {
            Circuit::HalfOpen { .. } => {
                g.outcomes.clear();
                g.circuit = if ok {
                    Circuit::Closed
                } else {
                    Circuit::Open {
                        until: now + cfg.cooldown,
                    }
                };
            }
            Circuit::Open { .. } => {}
            Circuit::Closed => {
                g.outcomes.push(now, ok, cfg.window);
                let (n, bad) = (g.outcomes.list.len(), g.outcomes.bad);
                if n >= cfg.min_requests as usize && bad as f64 >= cfg.error_ratio * n as f64 {
                    g.outcomes.clear();
                    g.circuit = Circuit::Open {
                        until: now + cfg.cooldown,
                    };
                    return true;
                }
            }
        }
        false
    }

    /// Another replica opened this deployment's circuit for `cooldown`
    /// (shared through Redis): a closed circuit here opens until then (one
    /// probe after it, as for its own). True if it did.
    pub fn open_elsewhere(&self, now: Instant, cooldown: Duration) -> bool {
        let mut g = self.lock();
        if g.circuit != Circuit::Closed {
            return false;
        }
        g.outcomes.clear();
        g.circuit = Circuit::Open {
            until: now + cooldown,
        };
        true
    }

    /// A first byte (a stream's first chunk, or a whole unary answer) after `ttft`.
    /// `latency` is the whole answer's, when it is complete. True when it
    /// was the probe that closed an open circuit.
    pub fn on_success(
        &self,
        cfg: &HealthConfig,
        now: Instant,
        ttft: Duration,
        latency: Option<Duration>,
    ) -> bool {
        let mut g = self.lock();
        g.ttft_ms.add(ms(ttft));
        if g.ttfts.len() == TTFT_SAMPLES {
            g.ttfts.pop_front();
        }
        g.ttfts.push_back(ms(ttft));
        if let Some(l) = latency {
            g.latency_ms.add(ms(l));
        }
        g.blocked_until = None;
        let probing = matches!(g.circuit, Circuit::HalfOpen { .. });
        Self::outcome(&mut g, cfg, now, true);
        probing && g.circuit == Circuit::Closed
    }

    /// A failure that says something about the deployment's health (5xx,
    /// 429, timeout, broken connection), never a client's own mistake.
    /// True when it opened the circuit.
    pub fn on_failure(&self, cfg: &HealthConfig, now: Instant, what: &str) -> bool {
        let mut g = self.lock();
        g.last_error = Some(what.chars().take(200).collect());
        Self::outcome(&mut g, cfg, now, false)
    }

    /// A stream that ended (well or not) after its first byte.
    pub fn on_stream_end(
        &self,
        cfg: &HealthConfig,
        now: Instant,
        latency: Duration,
        after_first: Duration,
        completion_tokens: u64,
        ok: bool,
    ) -> bool {
        let mut g = self.lock();
        g.latency_ms.add(ms(latency));
        if completion_tokens > 1 && after_first > Duration::from_millis(1) {
            g.tokens_per_s
                .add(completion_tokens as f64 / after_first.as_secs_f64());
        }
        if !ok {
            g.last_error = Some("the stream broke after its first byte".into());
            return Self::outcome(&mut g, cfg, now, false);
        }
        false
    }

    /// Output speed of a whole unary answer.
    pub fn on_tokens(&self, completion_tokens: u64, latency: Duration) {
        if completion_tokens > 1 && latency > Duration::from_millis(1) {
            self.lock()
                .tokens_per_s
                .add(completion_tokens as f64 / latency.as_secs_f64());
        }
    }

    /// Reads the upstream's rate-limit headers (OpenAI's and Groq's
    /// `x-ratelimit-*`, Anthropic's `anthropic-ratelimit-*`).
    pub fn observe_limits(&self, now: Instant, h: &HeaderMap) {
        // Most self-hosted upstreams send none: one pass over the few
        // names an answer has, instead of five hashed look-ups.
        let any = h.keys().any(|k| {
            let k = k.as_str();
            k.starts_with("x-ratelimit-") || k.starts_with("anthropic-ratelimit-")
        });
        if !any {
            return;
        }
        let requests = read_left(now, h, &REQUEST_LIMITS);
        let tokens = read_left(now, h, &TOKEN_LIMITS);
        if requests.is_none() && tokens.is_none() {
            return;
        }
        let mut g = self.lock();
        if requests.is_some() {
            g.requests_left = requests;
        }
        if tokens.is_some() {
            g.tokens_left = tokens;
        }
    }

    /// Takes one request of the provider's configured `rpm` / `tpm` on
    /// this node (the fallback when they are not shared through Redis).
    pub fn take_upstream(
        &self,
        rpm: Option<u64>,
        tpm: Option<u64>,
        now: Instant,
    ) -> Result<(), Over> {
        self.windowed().take(rpm, tpm, now)
    }

    /// Counts an answered request's tokens against the configured `tpm`.
    pub fn add_upstream_tokens(&self, tokens: u64, now: Instant) {
        self.windowed().add_tokens(tokens, now);
    }

    /// The requests and tokens this node sent in the last minute, counted
    /// against the configured limits.
    pub fn upstream_used(&self, now: Instant) -> (u64, u64) {
        let mut w = self.windowed();
        w.trim(now);
        w.used()
    }

    fn windowed(&self) -> MutexGuard<'_, Window> {
        self.upstream_limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A 429 with `retry-after`: the deployment is out until then.
    pub fn block_until(&self, until: Instant) {
        self.lock().blocked_until = Some(until);
    }

    /// True when the upstream has said it will refuse a request of
    /// `tokens` now: no requests or too few tokens left before the reset.
    /// `tokens` is asked for only when a token count is known to be short.
    pub fn saturated(&self, now: Instant, tokens: impl FnOnce() -> u64) -> bool {
        let g = self.lock();
        g.out_of_requests(now)
            || live(&g.tokens_left, now).is_some_and(|l| l.remaining < tokens().max(1))
    }

    /// Average TTFT (streams) or total latency (unary) in ms; `None` before any sample.
    pub fn latency_score(&self, stream: bool) -> Option<f64> {
        let g = self.lock();
        if stream {
            g.ttft_ms.0.or(g.latency_ms.0)
        } else {
            g.latency_ms.0.or(g.ttft_ms.0)
        }
    }

    pub fn tokens_per_s(&self) -> Option<f64> {
        self.lock().tokens_per_s.0
    }

    /// p95 of the recent TTFTs, once there are enough of them.
    pub fn ttft_p95(&self) -> Option<Duration> {
        p95(&self.lock().ttfts).map(|m| Duration::from_secs_f64(m / 1000.0))
    }

    /// The numbers `/metrics` shows of this deployment.
    pub fn gauges(&self, cfg: &HealthConfig, now: Instant) -> Gauges {
        let g = self.lock();
        let (_, error_rate) = g.window(cfg, now);
        let circuit = g.circuit_name(now);
        Gauges {
            healthy: circuit == "closed" && !g.out_of_requests(now),
            circuit,
            in_flight: self.in_flight(),
            requests: g.requests,
            errors: g.errors,
            error_rate,
        }
    }

    /// For `GET /admin/providers`.
    pub fn snapshot(&self, cfg: &HealthConfig, now: Instant) -> Value {
        let g = self.lock();
        let (window, error_rate) = g.window(cfg, now);
        let round = |v: Option<f64>| v.map(|x| (x * 100.0).round() / 100.0);
        let left = |l: &Option<Left>| {
            live(l, now).map(|l| {
                json!({"remaining": l.remaining,
                       "resets_in_ms": l.until.map(|u| u.saturating_duration_since(now).as_millis() as u64)})
            })
        };
        let circuit = g.circuit_name(now);
        json!({
            "healthy": circuit == "closed" && !g.out_of_requests(now),
            "circuit": circuit,
            "cooldown_remaining_ms": match g.circuit {
                Circuit::Open { until } => until.saturating_duration_since(now).as_millis() as u64,
                _ => 0,
            },
            "in_flight": self.in_flight(),
            "requests": g.requests,
            "errors": g.errors,
            "window_requests": window,
            "error_rate": (error_rate * 1000.0).round() / 1000.0,
            "ttft_ms_avg": round(g.ttft_ms.0),
            "ttft_ms_p95": round(p95(&g.ttfts)),
            "latency_ms_avg": round(g.latency_ms.0),
            "tokens_per_s_avg": round(g.tokens_per_s.0),
            "rate_limit": {
                "requests": left(&g.requests_left),
                "tokens": left(&g.tokens_left),
                "blocked_for_ms": g.blocked_until.filter(|u| now < *u).map(|u| u.saturating_duration_since(now).as_millis() as u64),
            },
            "last_error": g.last_error,
        })
    }
}

/// A rate-limit reading that has not reset yet.
fn live(l: &Option<Left>, now: Instant) -> Option<Left> {
    l.filter(|l| l.until.is_none_or(|u| now < u))
}

impl Inner {
    /// Attempts in the health window, and the share of them that failed.
    fn window(&self, cfg: &HealthConfig, now: Instant) -> (usize, f64) {
        let (mut n, mut failed) = (0, 0);
        for (_, ok) in self
            .outcomes
            .list
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= cfg.window)
        {
            n += 1;
            failed += usize::from(!*ok);
        }
        (
            n,
            if n == 0 {
                0.0
            } else {
                failed as f64 / n as f64
            },
        )
    }

    /// `closed`, `open`, or `half_open` once an open circuit's cooldown is over.
    fn circuit_name(&self, now: Instant) -> &'static str {
        match self.circuit {
            Circuit::Open { until } if now >= until => "half_open",
            c => c.name(),
        }
    }

    /// Blocked by a 429's `retry-after`, or no requests left before the reset.
    fn out_of_requests(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|u| now < u)
            || live(&self.requests_left, now).is_some_and(|l| l.remaining == 0)
    }
}

/// A deployment's state as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Gauges {
    pub healthy: bool,
    pub circuit: &'static str,
    pub in_flight: u32,
    /// Attempts and failed attempts since the start.
    pub requests: u64,
    pub errors: u64,
    /// Failed share of the attempts in the health window.
    pub error_rate: f64,
}

fn p95(samples: &VecDeque<f64>) -> Option<f64> {
    if samples.len() < P95_MIN_SAMPLES {
        return None;
    }
    let mut v: Vec<f64> = samples.iter().copied().collect();
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64) * 0.95).ceil() as usize;
    v.get(rank.clamp(1, v.len()) - 1).copied()
}

/// (remaining, reset) header pairs for requests, in the order they are tried
/// (OpenAI's and Groq's, then Anthropic's). Names are built once: looking a
/// header up by `&str` re-parses the name on every call.
static REQUEST_LIMITS: [(HeaderName, HeaderName); 2] = [
    (
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ),
    (
        HeaderName::from_static("anthropic-ratelimit-requests-remaining"),
        HeaderName::from_static("anthropic-ratelimit-requests-reset"),
    ),
];

/// The same for tokens.
static TOKEN_LIMITS: [(HeaderName, HeaderName); 3] = [
    (
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ),
    (
        HeaderName::from_static("anthropic-ratelimit-tokens-remaining"),
        HeaderName::from_static("anthropic-ratelimit-tokens-reset"),
    ),
    (
        HeaderName::from_static("anthropic-ratelimit-input-tokens-remaining"),
        HeaderName::from_static("anthropic-ratelimit-input-tokens-reset"),
    ),
];

fn read_left(now: Instant, h: &HeaderMap, names: &[(HeaderName, HeaderName)]) -> Option<Left> {
    names.iter().find_map(|(rem, reset)| {
        let remaining = h.get(rem)?.to_str().ok()?.trim().parse::<u64>().ok()?;
        let until = h
            .get(reset)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| reset_in(v.trim()))
            .unwrap_or(DEFAULT_RESET);
        Some(Left {
            remaining,
            until: Some(now + until),
        })
    })
}

/// A reset time as OpenAI writes it (`1s`, `6m0s`, `59.832s`, `20ms`) or as
/// Anthropic does (an RFC 3339 instant).
pub fn reset_in(v: &str) -> Option<Duration> {
    if let Some(d) = go_duration(v) {
        return Some(d);
    }
    let at = humantime::parse_rfc3339_weak(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn go_duration(v: &str) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    let mut total = 0.0;
    let mut rest = v;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" | "" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    total
        .is_finite()
        .then(|| Duration::from_secs_f64(total.max(0.0)))
}

/// Retries (on the same deployment) and hedges spend from a budget that
/// requests fill: each request adds `ratio` of a retry, and a floor of
/// `min_per_s` retries per second keeps a quiet gateway able to retry.
/// So retries add at most `ratio` (plus the floor) to the upstream load,
/// however many requests fail. Failover to another deployment is free.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_s: f64,
    cap: f64,
    inner: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_s: f64, now: Instant) -> RetryBudget {
        let cap = (min_per_s * 10.0).max(10.0);
        RetryBudget {
            ratio,
            min_per_s,
            cap,
            inner: Mutex::new((cap, now)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (f64, Instant)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refill(&self, g: &mut (f64, Instant), now: Instant) {
        let dt = now.saturating_duration_since(g.1).as_secs_f64();
        g.0 = (g.0 + dt * self.min_per_s).min(self.cap);
        g.1 = g.1.max(now);
    }

    /// Every client request deposits its share.
    pub fn on_request(&self, now: Instant) {
        let mut g = self.lock();
        self.refill(&mut g, now);
        g.0 = (g.0 + self.ratio).min(self.cap);
    }

    /// Takes one retry from the budget, if there is one.
    pub fn try_spend(&self, now: Instant) -> bool {
        let mut g = self.lock();
        self.refill(&mut g, now);
        if g.0 >= 1.0 {
            g.0 -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn balance(&self, now: Instant) -> f64 {
        let mut g = self.lock();
        self.refill(&mut g, now);
        g.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig {
            window: Duration::from_secs(10),
            min_requests: 4,
            error_ratio: 0.5,
            cooldown: Duration::from_secs(5),
        }
    }

    #[test]
    fn window_failure_count_matches_its_outcomes() {
        let t0 = Instant::now();
        let window = Duration::from_secs(10);
        let mut w = Outcomes::default();
        // Beyond the cap and across window expiries, with a mix of outcomes.
        for i in 0..(MAX_OUTCOMES as u64 * 2 + 300) {
            let now = t0 + Duration::from_millis(i * 7);
            w.push(now, i % 3 != 0 && i % 7 != 0, window);
            let recount = w.list.iter().filter(|(_, ok)| !ok).count();
            assert_eq!(w.bad, recount, "after {i}");
            assert!(w.list.len() <= MAX_OUTCOMES);
            assert!(w
                .list
                .iter()
                .all(|(t, _)| now.saturating_duration_since(*t) <= window));
        }
        w.clear();
        assert_eq!((w.list.len(), w.bad), (0, 0));
    }

    #[test]
    fn breaker_opens_skips_probes_and_recovers() {
        let c = cfg();
        let s = DeploymentStats::default();
        let t0 = Instant::now();
        // Three failures in a row are below min_requests: still closed.
        for i in 0..3 {
            s.on_failure(&c, t0 + Duration::from_millis(i), "500");
        }
        assert_eq!(s.circuit(), Circuit::Closed);
        assert_eq!(s.admit(&c, t0), Admission::Yes);
        // The fourth makes 4/4 errors: open for the cooldown.
        let t1 = t0 + Duration::from_millis(10);
        s.on_failure(&c, t1, "500");
        assert_eq!(
            s.circuit(),
            Circuit::Open {
                until: t1 + c.cooldown
            }
        );
        assert_eq!(
            s.admit(&c, t1 + Duration::from_secs(1)),
            Admission::No(t1 + c.cooldown)
        );
        // After the cooldown: exactly one probe.
        let t2 = t1 + c.cooldown;
        assert_eq!(s.admit(&c, t2), Admission::Probe);
        assert!(matches!(s.admit(&c, t2), Admission::No(_)));
        // The probe fails: open again for a full cooldown.
        s.on_failure(&c, t2, "500");
        assert!(matches!(s.circuit(), Circuit::Open { .. }));
        assert!(matches!(
            s.admit(&c, t2 + Duration::from_secs(4)),
            Admission::No(_)
        ));
        let t3 = t2 + c.cooldown;
        assert_eq!(s.admit(&c, t3), Admission::Probe);
        // The probe succeeds: closed, with a clean window.
        s.on_success(&c, t3, Duration::from_millis(5), None);
        assert_eq!(s.circuit(), Circuit::Closed);
        s.on_failure(&c, t3, "500");
        assert_eq!(s.circuit(), Circuit::Closed);
    }

    #[test]
    fn breaker_needs_the_ratio_within_the_window() {
        let c = cfg();
        let s = DeploymentStats::default();
        let t0 = Instant::now();
        // One failure in three: below 50%.
        for i in 0..6u64 {
            let t = t0 + Duration::from_millis(i);
            if i % 3 == 2 {
                s.on_failure(&c, t, "500");
            } else {
                s.on_success(&c, t, Duration::from_millis(1), None);
            }
        }
        assert_eq!(s.circuit(), Circuit::Closed);
        // Old successes age out of the window; new failures then dominate.
        let late = t0 + Duration::from_secs(60);
        for i in 0..3 {
            s.on_failure(&c, late + Duration::from_millis(i), "503");
        }
        assert_eq!(s.circuit(), Circuit::Closed, "3 < min_requests");
        s.on_failure(&c, late + Duration::from_millis(5), "503");
        assert!(matches!(s.circuit(), Circuit::Open { .. }));
    }

    #[test]
    fn a_lost_probe_is_replaced_after_a_cooldown() {
        let c = cfg();
        let s = DeploymentStats::default();
        let t0 = Instant::now();
        for _ in 0..4 {
            s.on_failure(&c, t0, "x");
        }
        let t1 = t0 + c.cooldown;
        assert_eq!(s.admit(&c, t1), Admission::Probe);
        assert!(matches!(
            s.admit(&c, t1 + Duration::from_secs(1)),
            Admission::No(_)
        ));
        assert_eq!(s.admit(&c, t1 + c.cooldown), Admission::Probe);
    }

    #[test]
    fn averages_decay_toward_new_samples() {
        let c = cfg();
        let s = DeploymentStats::default();
        let now = Instant::now();
        assert_eq!(s.latency_score(true), None);
        s.on_success(
            &c,
            now,
            Duration::from_millis(100),
            Some(Duration::from_millis(200)),
        );
        assert_eq!(s.latency_score(true), Some(100.0));
        assert_eq!(s.latency_score(false), Some(200.0));
        for _ in 0..20 {
            s.on_success(
                &c,
                now,
                Duration::from_millis(10),
                Some(Duration::from_millis(20)),
            );
        }
        let t = s.latency_score(true).unwrap();
        assert!((10.0..11.0).contains(&t), "{t}");
        s.on_tokens(100, Duration::from_secs(1));
        assert_eq!(s.tokens_per_s(), Some(100.0));
    }

    #[test]
    fn ttft_p95_needs_enough_samples() {
        let c = cfg();
        let s = DeploymentStats::default();
        let now = Instant::now();
        for i in 1..P95_MIN_SAMPLES as u64 {
            s.on_success(&c, now, Duration::from_millis(i), None);
        }
        assert_eq!(s.ttft_p95(), None);
        for i in 0..80u64 {
            s.on_success(
                &c,
                now,
                Duration::from_millis(if i % 20 == 0 { 500 } else { 10 }),
                None,
            );
        }
        // 100 samples, 4 slow ones (500 ms) and 19 + 76 fast: p95 is fast... until 5% are slow.
        let p = s.ttft_p95().unwrap();
        assert!(p <= Duration::from_millis(20), "{p:?}");
        s.on_success(&c, now, Duration::from_millis(500), None);
        s.on_success(&c, now, Duration::from_millis(500), None);
        assert_eq!(s.ttft_p95(), Some(Duration::from_millis(500)));
    }

    #[test]
    fn rate_limit_headers_steer() {
        let s = DeploymentStats::default();
        let now = Instant::now();
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
        h.insert("x-ratelimit-reset-requests", "1.5s".parse().unwrap());
        h.insert("x-ratelimit-remaining-tokens", "5000".parse().unwrap());
        h.insert("x-ratelimit-reset-tokens", "6m0s".parse().unwrap());
        s.observe_limits(now, &h);
        assert!(s.saturated(now, || 10));
        // After the requests' reset only the token count matters.
        let later = now + Duration::from_secs(2);
        assert!(!s.saturated(later, || 10));
        assert!(s.saturated(later, || 6000));
        assert!(!s.saturated(now + Duration::from_secs(400), || 6000));
        // Anthropic's names, with an RFC 3339 reset.
        let s = DeploymentStats::default();
        let mut h = HeaderMap::new();
        h.insert(
            "anthropic-ratelimit-requests-remaining",
            "0".parse().unwrap(),
        );
        let reset =
            humantime::format_rfc3339(SystemTime::now() + Duration::from_secs(30)).to_string();
        h.insert("anthropic-ratelimit-requests-reset", reset.parse().unwrap());
        s.observe_limits(now, &h);
        assert!(s.saturated(now + Duration::from_secs(20), || 1));
        assert!(!s.saturated(now + Duration::from_secs(40), || 1));
        // A 429's retry-after blocks until then; a success clears it.
        s.block_until(now + Duration::from_secs(100));
        assert!(s.saturated(now + Duration::from_secs(50), || 1));
    }

    #[test]
    fn reset_durations() {
        assert_eq!(go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            go_duration("1h2m3.5s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(go_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(go_duration("soon"), None);
        assert_eq!(go_duration(""), None);
    }

    #[test]
    fn retry_budget_bounds_retries_to_a_fraction_of_requests() {
        let t0 = Instant::now();
        let b = RetryBudget::new(0.2, 1.0, t0);
        // Drain the initial allowance.
        let mut granted = 0;
        while b.try_spend(t0) {
            granted += 1;
        }
        assert_eq!(granted, 10);
        // 1000 failing requests within one second: at most 20% + 1/s retried.
        let mut retries = 0;
        for i in 0..1000u64 {
            let t = t0 + Duration::from_micros(i * 1000);
            b.on_request(t);
            if b.try_spend(t) {
                retries += 1;
            }
        }
        assert!((200..=202).contains(&retries), "{retries}");
        // Idle time refills the floor, up to the cap.
        let later = t0 + Duration::from_secs(3600);
        assert!((b.balance(later) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn in_flight_counts_until_dropped() {
        let s = Arc::new(DeploymentStats::default());
        let a = s.enter();
        let b = s.enter();
        assert_eq!(s.in_flight(), 2);
        drop(a);
        assert_eq!(s.in_flight(), 1);
        drop(b);
        assert_eq!(s.in_flight(), 0);
    }
}
