//! Busy-polling on the serving threads (`[server] busy_poll_us`).
//!
//! At low concurrency most of the time a proxy adds is not its own work but
//! the kernel putting its thread to sleep in `epoll_wait` and waking it
//! again — twice per request (the client's request, the upstream's answer),
//! and in a virtual machine each wake-up is an interrupt through the
//! hypervisor. After a request begins and after it is answered (a stream:
//! when it ends) a serving thread therefore keeps polling
//! its sockets (`epoll_wait` with a zero timeout) for a short window instead
//! of sleeping: the upstream's answer and the client's next request are
//! picked up without a wake-up. Between polls it calls `sched_yield`, so any
//! other runnable thread on the same CPU goes first. It spins only while at
//! most a few requests are in flight on the thread: busier, it is seldom idle
//! anyway and spinning would only take CPU from the upstream and the client.
//! A thread that was that busy lately ([`CROWD_HOLD`]) does not spin either,
//! and a spinning thread stops as soon as it has been that busy, even if
//! the count is back under the limit when it looks: under steady load the
//! count of requests in flight dips below the limit now and then, and at 64
//! concurrent requests those dips spent 0.8 system calls per request
//! spinning (docs/performance.md, "Fifteenth session"; the second half
//! since the nineteenth).
//! Once the window passes with no request, the thread sleeps as usual. The
//! cost is CPU while idle: at most one window per request.
//!
//! The poller is a task on the serving thread's own runtime: yielding to
//! tokio's current-thread scheduler makes it poll the I/O driver without
//! blocking before it runs the task again.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

thread_local! {
    static ACTIVITY: Cell<Option<Rc<Activity>>> = const { Cell::new(None) };
}

/// One serving thread's activity, shared by its requests and its poller.
struct Activity {
    /// Requests begun or answered on this thread (wrapping).
    seq: Cell<u64>,
    /// Requests being handled on this thread (until their handler returns).
    in_flight: Cell<u32>,
    /// The poller is parked waiting for a request.
    parked: Cell<bool>,
    /// When more than [`MAX_IN_FLIGHT`] requests were last in flight here
    /// (cleared once [`CROWD_HOLD`] has passed).
    crowded_at: Cell<Option<Instant>>,
    wake: tokio::sync::Notify,
}

impl Activity {
    /// Whether the thread had more than [`MAX_IN_FLIGHT`] requests in
    /// flight within the last [`CROWD_HOLD`].
    fn crowded(&self) -> bool {
        match self.crowded_at.get() {
            Some(t) if t.elapsed() < CROWD_HOLD => true,
            Some(_) => {
                self.crowded_at.set(None);
                false
            }
            None => false,
        }
    }
}

/// Spinning pays at low concurrency, where a wake-up is most of a request's
/// time; with more requests than this in flight on a thread it is not idle
/// for long anyway, and spinning only takes CPU from the upstream and the
/// client.
const MAX_IN_FLIGHT: u32 = 4;

/// How long after it last had more than [`MAX_IN_FLIGHT`] requests in
/// flight a thread does not spin: long enough to span the dips of steady
/// load, short against the quiet that follows a burst.
const CROWD_HOLD: Duration = Duration::from_millis(20);

/// Runs `f` on the current thread's activity, if it busy-polls.
fn with_activity(f: impl FnOnce(&Activity)) {
    ACTIVITY.with(|a| {
        let cur = a.take();
        if let Some(act) = &cur {
            act.seq.set(act.seq.get().wrapping_add(1));
            f(act);
            if act.parked.get() && act.in_flight.get() <= MAX_IN_FLIGHT && !act.crowded() {
                act.parked.set(false);
                act.wake.notify_one();
            }
        }
        a.set(cur);
    });
}

/// A request's handler starts on the current thread; it ends when the
/// guard is dropped — when the handler returned its response, or when its
/// future was dropped (the client went away), so the count never leaks.
/// Outside a busy-polling serving thread this (and [`touch`]) does nothing.
pub fn begin() -> InFlight {
    with_activity(|a| {
        let n = a.in_flight.get().saturating_add(1);
        a.in_flight.set(n);
        if n > MAX_IN_FLIGHT {
            a.crowded_at.set(Some(Instant::now()));
        }
    });
    InFlight(())
}

/// One request being handled (see [`begin`]).
#[must_use]
pub struct InFlight(());

impl Drop for InFlight {
    fn drop(&mut self) {
        with_activity(|a| a.in_flight.set(a.in_flight.get().saturating_sub(1)));
    }
}

/// Something else was answered (a stream ended).
pub fn touch() {
    with_activity(|_| {});
}

/// The poller of the current serving thread: runs until dropped. Must run on
/// the thread's own current-thread runtime (it registers itself in a
/// thread-local).
pub async fn poller(window: Duration) {
    let act = Rc::new(Activity {
        seq: Cell::new(0),
        in_flight: Cell::new(0),
        parked: Cell::new(true),
        crowded_at: Cell::new(None),
        wake: tokio::sync::Notify::new(),
    });
    ACTIVITY.with(|a| a.set(Some(act.clone())));
    let _unregister = Unregister;
    loop {
        act.wake.notified().await;
        let mut seen = act.seq.get();
        let mut since = Instant::now();
        loop {
            std::thread::yield_now();
            tokio::task::yield_now().await;
            let now = Instant::now();
            let s = act.seq.get();
            if s != seen {
                seen = s;
                since = now;
            } else if now.duration_since(since) >= window {
                break;
            }
            // Busy now, or between two looks (a burst that came and went
            // while the tasks ran): steady load, not a quiet thread.
            if act.in_flight.get() > MAX_IN_FLIGHT || act.crowded() {
                break;
            }
        }
        // No await since the last look at `seq`: nothing was missed.
        act.parked.set(true);
    }
}

struct Unregister;

impl Drop for Unregister {
    fn drop(&mut self) {
        ACTIVITY.with(|a| a.set(None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touch_outside_a_serving_thread_does_nothing() {
        touch();
        ACTIVITY.with(|a| {
            let cur = a.take();
            assert!(cur.is_none());
            a.set(cur);
        });
    }

    #[test]
    fn poller_spins_after_a_request_then_parks() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let window = Duration::from_millis(20);
            let poller = tokio::task::spawn_local(poller(window));
            tokio::task::yield_now().await;
            let act = ACTIVITY.with(|a| {
                let cur = a.take();
                a.set(cur.clone());
                cur
            });
            let act = act.expect("poller registered");
            assert!(act.parked.get(), "parked before any request");
            let r = begin();
            assert!(!act.parked.get(), "woken by a request");
            drop(r);
            // While it spins, timers and other tasks still run.
            let t0 = Instant::now();
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(t0.elapsed() >= Duration::from_millis(5));
            // (Whether it still spins here depends on whether another
            // thread wanted this CPU meanwhile: not asserted.)
            tokio::time::sleep(window * 3).await;
            assert!(act.parked.get(), "parked once the window passed");
            // Busy: more requests in flight than spinning pays for.
            let many: Vec<InFlight> = (0..=MAX_IN_FLIGHT).map(|_| begin()).collect();
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            assert!(act.parked.get(), "no spinning with many requests in flight");
            drop(many);
            assert_eq!(act.in_flight.get(), 0);
            // Lately crowded: a request does not start it again (steady
            // load dips below the limit now and then) ...
            drop(begin());
            assert!(act.parked.get(), "no spinning right after a crowd");
            // ... until the crowd is CROWD_HOLD in the past.
            tokio::time::sleep(CROWD_HOLD + Duration::from_millis(5)).await;
            drop(begin());
            assert!(!act.parked.get(), "spins again once the crowd is past");
            // A crowd that comes and goes between two of the spinning
            // poller's looks stops it too.
            drop((0..=MAX_IN_FLIGHT).map(|_| begin()).collect::<Vec<_>>());
            assert_eq!(act.in_flight.get(), 0);
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            assert!(act.parked.get(), "no spinning after a burst between looks");
            tokio::time::sleep(CROWD_HOLD + Duration::from_millis(5)).await;
            drop(begin());
            assert!(!act.parked.get(), "spins again once that burst is past");
            // A handler dropped before it answered (the client went away)
            // does not leave its count behind.
            let handler = async {
                let _r = begin();
                std::future::pending::<()>().await;
            };
            let mut handler = Box::pin(handler);
            let _ = futures::poll!(handler.as_mut());
            assert_eq!(act.in_flight.get(), 1);
            drop(handler);
            assert_eq!(act.in_flight.get(), 0);
            tokio::time::sleep(window * 3).await;
            assert!(act.parked.get());
            poller.abort();
            let _ = poller.await;
            drop(act);
            ACTIVITY.with(|a| {
                let cur = a.take();
                assert!(cur.is_none(), "unregistered when dropped");
            });
        });
    }
}
