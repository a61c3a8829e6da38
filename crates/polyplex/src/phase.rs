//! Stage stamps on the request path, for finding where a stream's first
//! byte spends its time (docs/performance.md, "Seventh session: the stages
//! of a stream start").
//!
//! Built only with the `phases` feature; without it every call here is an
//! empty inline function. With it, each serving thread notes the wall-clock
//! time of each named stage of its current request and, when a stream ends,
//! prints them to stderr as one `PHASES name=ns ...` line, which
//! `bench/phases.py` lines up with the benchmark client's own stamps
//! (`polyplex-bench load --streams N --trace`). Meant for sequential
//! streams: concurrent requests on one thread would mix their stamps.

#[cfg(feature = "phases")]
mod on {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static STAMPS: RefCell<Vec<(&'static str, u64)>> = const { RefCell::new(Vec::new()) };
    }

    fn now_ns() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn start() {
        STAMPS.with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            s.push(("gate", now_ns()));
        });
    }

    pub fn mark(stage: &'static str) {
        STAMPS.with(|s| s.borrow_mut().push((stage, now_ns())));
    }

    pub fn dump() {
        let line = STAMPS.with(|s| {
            let mut s = s.borrow_mut();
            let line: Vec<String> = s.iter().map(|(n, t)| format!("{n}={t}")).collect();
            s.clear();
            line.join(" ")
        });
        eprintln!("PHASES {line}");
    }
}

#[cfg(feature = "phases")]
pub use on::{dump, mark, start};

/// A new request begins on this thread (its first stage, `gate`).
#[cfg(not(feature = "phases"))]
#[inline(always)]
pub fn start() {}

/// The current request reached `stage`.
#[cfg(not(feature = "phases"))]
#[inline(always)]
pub fn mark(_stage: &'static str) {}

/// A stream ended: its stages go to stderr.
#[cfg(not(feature = "phases"))]
#[inline(always)]
pub fn dump() {}
