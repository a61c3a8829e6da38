//! A sliding minute of requests and tokens, exact on one node: the
//! per-minute limits of a gateway key ([`crate::keys`]) and of an upstream
//! deployment (a provider's `rpm` / `tpm`, [`crate::health`]). With Redis,
//! [`crate::shared`] counts the same limits for every replica and this is
//! the fallback.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a request or token counts.
pub const WINDOW: Duration = Duration::from_secs(60);

/// One limit as the `x-ratelimit-*` headers tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<LimitState>,
    pub tpm: Option<LimitState>,
}

/// The limit a request would go over: how much of it the last minute used,
/// and how long until it has room again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Requests { used: u64, wait: Duration },
    Tokens { used: u64, wait: Duration },
}

impl Over {
    pub fn wait(&self) -> Duration {
        match self {
            Over::Requests { wait, .. } | Over::Tokens { wait, .. } => *wait,
        }
    }
}

/// The requests and tokens of the last minute.
#[derive(Debug, Default)]
pub struct Window {
    requests: VecDeque<Instant>,
    tokens: VecDeque<(Instant, u64)>,
    token_sum: u64,
}

impl Window {
    /// Forgets what is older than a minute.
    pub fn trim(&mut self, now: Instant) {
        while self
            .requests
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.requests.pop_front();
        }
        while let Some((t, n)) = self.tokens.front() {
            if now.duration_since(*t) < WINDOW {
                break;
            }
            self.token_sum -= n;
            self.tokens.pop_front();
        }
    }

    /// Counts one request if the last minute leaves room under `rpm`
    /// requests and `tpm` tokens (a request is admitted while the tokens
    /// are under the limit: its own are known only once it is answered).
    pub fn take(&mut self, rpm: Option<u64>, tpm: Option<u64>, now: Instant) -> Result<(), Over> {
        self.trim(now);
        if let Some(rpm) = rpm {
            let used = self.requests.len() as u64;
            if used >= rpm {
                let wait = self
                    .requests
                    .front()
                    .map_or(WINDOW, |t| WINDOW.saturating_sub(now.duration_since(*t)));
                return Err(Over::Requests { used, wait });
            }
        }
        if let Some(tpm) = tpm {
            if self.token_sum >= tpm {
                return Err(Over::Tokens {
                    used: self.token_sum,
                    wait: self.token_release(tpm, now),
                });
            }
        }
        if rpm.is_some() {
            self.requests.push_back(now);
        }
        Ok(())
    }

    /// Counts a finished request's tokens.
    pub fn add_tokens(&mut self, n: u64, now: Instant) {
        if n > 0 {
            self.tokens.push_back((now, n));
            self.token_sum += n;
        }
    }

    /// Requests and tokens in the last minute (after [`Window::trim`]).
    pub fn used(&self) -> (u64, u64) {
        (self.requests.len() as u64, self.token_sum)
    }

    /// Nothing counted (after [`Window::trim`]: nothing in the last minute).
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.tokens.is_empty()
    }

    /// The header state of `rpm` and `tpm` (after [`Window::trim`]).
    pub fn state(&self, rpm: Option<u64>, tpm: Option<u64>, now: Instant) -> Limits {
        Limits {
            rpm: rpm.map(|rpm| LimitState {
                limit: rpm,
                remaining: rpm.saturating_sub(self.requests.len() as u64),
                reset: self.requests.front().map_or(Duration::ZERO, |t| {
                    WINDOW.saturating_sub(now.duration_since(*t))
                }),
            }),
            tpm: tpm.map(|tpm| LimitState {
                limit: tpm,
                remaining: tpm.saturating_sub(self.token_sum),
                reset: if self.token_sum == 0 {
                    Duration::ZERO
                } else {
                    self.token_release(tpm, now)
                },
            }),
        }
    }

    /// How long until enough tokens leave the window to be under `tpm` again.
    fn token_release(&self, tpm: u64, now: Instant) -> Duration {
        let mut sum = self.token_sum;
        for (t, n) in &self.tokens {
            sum -= n;
            if sum < tpm {
                return WINDOW.saturating_sub(now.duration_since(*t));
            }
        }
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_tokens_slide_out_after_a_minute() {
        let mut w = Window::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(w.take(Some(2), None, t0), Ok(()));
        assert_eq!(w.take(Some(2), None, t0 + s(10)), Ok(()));
        assert_eq!(
            w.take(Some(2), None, t0 + s(20)),
            Err(Over::Requests {
                used: 2,
                wait: s(40)
            })
        );
        assert_eq!(w.take(Some(2), None, t0 + s(60)), Ok(()));
        // Tokens: admitted while under the limit; room again once enough
        // of them are older than a minute.
        let mut w = Window::default();
        assert_eq!(w.take(None, Some(100), t0), Ok(()));
        w.add_tokens(60, t0);
        w.add_tokens(50, t0 + s(5));
        assert_eq!(
            w.take(None, Some(100), t0 + s(6)),
            Err(Over::Tokens {
                used: 110,
                wait: s(54)
            })
        );
        assert_eq!(w.used(), (0, 110));
        let l = w.state(Some(5), Some(100), t0 + s(6));
        assert_eq!(l.tpm.map(|t| (t.remaining, t.reset)), Some((0, s(54))));
        assert_eq!(l.rpm.map(|r| r.remaining), Some(5));
        assert_eq!(w.take(None, Some(100), t0 + s(60)), Ok(()));
        assert_eq!(w.used(), (0, 50));
    }
}
