//! Background scheduling for the usage writer (docs/performance.md, "Tenth
//! session: the usage writer out of the way").
//!
//! The usage writer wakes every 20 ms and writes what came in meanwhile: a
//! burst of a millisecond or so of work on its thread and on its SQLite
//! connection's thread. Under the normal policy the kernel lets such a
//! freshly woken thread take a core from a request in flight, and on a small
//! host that burst is most of the gateway's c=1 latency tail. So on Linux
//! both threads run under `SCHED_IDLE`: they get a core only when no other
//! thread wants it, which on a gateway that is not saturated is most of the
//! time. A record is never dropped for it: should the writer fall behind
//! (records waiting longer than [`LAG_HIGH`], a host kept busy), both threads
//! go back to the normal policy until it has caught up, so the queue never
//! grows without bound and budgets shared through the store stay current.
//!
//! Leaving `SCHED_IDLE` takes `CAP_SYS_NICE` (or an `RLIMIT_NICE` of 20 or
//! more). Where the process cannot, it never enters it: [`Background::enter`]
//! checks first, on a throwaway thread, and the writer then keeps the normal
//! policy, as on other systems.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Records waiting this long send the writer back to the normal policy.
pub const LAG_HIGH: Duration = Duration::from_millis(250);
/// Once back, it stays at least this long, and returns to `SCHED_IDLE` only
/// when the records it writes waited less than [`LAG_LOW`].
const HOLD: Duration = Duration::from_secs(5);
const LAG_LOW: Duration = Duration::from_millis(60);

/// The current thread and the threads it starts (they inherit its policy),
/// under `SCHED_IDLE` while they keep up. Shared: someone waiting for the
/// writer ([`Background::hurry`]) calls it out of the background at once.
pub struct Background {
    state: Mutex<State>,
    /// Under `SCHED_IDLE` now; changed only with `state` locked, read
    /// without it (the recorders look).
    idle: AtomicBool,
}

struct State {
    /// The writer's thread first, then its store connection's threads.
    tids: Vec<i32>,
    /// When `idle` last changed (or a hurry renewed the hold).
    changed: Instant,
}

impl Background {
    /// Puts the current thread under `SCHED_IDLE`, if this process can
    /// also take it back out; None (and nothing changed) otherwise.
    pub fn enter() -> Option<Background> {
        if !sys::can_leave_idle() {
            return None;
        }
        let me = sys::gettid();
        sys::set_idle(me, true).ok()?;
        Some(Background {
            state: Mutex::new(State {
                tids: vec![me],
                changed: Instant::now(),
            }),
            idle: AtomicBool::new(true),
        })
    }

    /// Threads of this process now, to tell later which are new
    /// ([`Background::adopt_new`]).
    pub fn threads() -> Vec<i32> {
        sys::threads()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes on the SQLite connection workers (sqlx names them
    /// `sqlx-sqlite-worker-N`) started since `before` by this thread, which
    /// they took `SCHED_IDLE` from. Threads another thread started
    /// meanwhile, under the normal policy, are left alone.
    pub fn adopt_new(&self, before: &[i32]) {
        let mut st = self.state();
        for t in sys::threads() {
            if !before.contains(&t)
                && !st.tids.contains(&t)
                && sys::is_idle(t)
                && sys::name(t).starts_with("sqlx-sqlite")
            {
                st.tids.push(t);
            }
        }
    }

    /// Whether the threads are under `SCHED_IDLE` now (without a lock).
    pub fn is_idle(&self) -> bool {
        self.idle.load(Ordering::Relaxed)
    }

    /// The writer wrote (or is about to write) records that waited up to
    /// `lag`: back to the normal policy when it has fallen behind, back to
    /// `SCHED_IDLE` when it has caught up again.
    pub fn observe(&self, lag: Duration) {
        let mut st = self.state();
        let idle = self.is_idle();
        let want_idle = if idle {
            lag < LAG_HIGH
        } else {
            lag < LAG_LOW && st.changed.elapsed() >= HOLD
        };
        if want_idle != idle {
            self.switch(&mut st, want_idle);
            if want_idle {
                tracing::debug!("usage writer caught up; back to background priority");
            } else {
                // Debug: on a host kept busy this comes every few seconds.
                tracing::debug!(
                    lag_ms = lag.as_millis() as u64,
                    "usage writer fell behind; running it at normal priority until it catches up"
                );
            }
        }
    }

    /// Someone waits for the writer (a usage report flushes it first), or
    /// it has not taken records for a while (a recorder noticed): the
    /// normal policy at once, for at least the hold time.
    pub fn hurry(&self) {
        let mut st = self.state();
        if self.is_idle() {
            self.switch(&mut st, false);
        } else {
            st.changed = Instant::now();
        }
    }

    /// Moves every thread to `SCHED_IDLE` (`idle`) or the normal policy;
    /// `st` is this one's state, locked.
    fn switch(&self, st: &mut State, idle: bool) {
        // A thread that has ended (a connection reopened) is dropped; the
        // writer's own (first) is kept whatever happens.
        let writer = st.tids.first().copied();
        st.tids
            .retain(|&t| sys::set_idle(t, idle).is_ok() || Some(t) == writer);
        self.idle.store(idle, Ordering::Relaxed);
        st.changed = Instant::now();
    }
}

#[cfg(target_os = "linux")]
mod sys {
    use scheduler::Policy;

    pub fn gettid() -> i32 {
        nix::unistd::gettid().as_raw()
    }

    /// `SCHED_IDLE` (`idle`) or `SCHED_OTHER` at nice 0 for thread `tid`.
    pub fn set_idle(tid: i32, idle: bool) -> Result<(), ()> {
        let policy = if idle { Policy::Idle } else { Policy::Other };
        scheduler::set_policy(tid, policy, 0)
    }

    /// Whether thread `tid` of this process is under `SCHED_IDLE` (5):
    /// field 41 of its `stat`, counted after the parenthesised name.
    pub fn is_idle(tid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 1..];
                rest.split_whitespace().nth(41 - 3).map(|p| p == "5")
            })
            .unwrap_or(false)
    }

    /// Thread `tid`'s name (as the kernel keeps it: 15 bytes at most).
    pub fn name(tid: i32) -> String {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default()
    }

    /// Whether a thread of this process may leave `SCHED_IDLE` once in it:
    /// tried on a thread of its own, which ends right after.
    pub fn can_leave_idle() -> bool {
        std::thread::Builder::new()
            .name("polyplex-probe".into())
            .spawn(|| {
                let me = gettid();
                set_idle(me, true).is_ok() && set_idle(me, false).is_ok()
            })
            .ok()
            .and_then(|h| h.join().ok())
            .unwrap_or(false)
    }

    pub fn threads() -> Vec<i32> {
        std::fs::read_dir("/proc/self/task")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    pub fn gettid() -> i32 {
        0
    }
    pub fn set_idle(_tid: i32, _idle: bool) -> Result<(), ()> {
        Err(())
    }
    pub fn is_idle(_tid: i32) -> bool {
        false
    }
    pub fn name(_tid: i32) -> String {
        String::new()
    }
    pub fn can_leave_idle() -> bool {
        false
    }
    pub fn threads() -> Vec<i32> {
        Vec::new()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// On a thread of its own (the policy is per thread): enters, adopts
    /// a thread it starts, leaves when records lag, returns when they do
    /// not (after the hold time).
    #[test]
    fn enters_adopts_leaves_and_returns() {
        std::thread::spawn(|| {
            let Some(bg) = Background::enter() else {
                // Not allowed to leave SCHED_IDLE here: it must not have entered.
                assert!(!sys::is_idle(sys::gettid()));
                return;
            };
            assert!(bg.is_idle());
            assert!(sys::is_idle(sys::gettid()));
            let before = Background::threads();
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let (tid_tx, tid_rx) = std::sync::mpsc::channel();
            // Named as sqlx names a SQLite connection's worker.
            let child = std::thread::Builder::new()
                .name("sqlx-sqlite-test".into())
                .spawn(move || {
                    tid_tx.send(sys::gettid()).unwrap();
                    let _ = rx.recv();
                })
                .unwrap();
            let child_tid = tid_rx.recv().unwrap();
            bg.adopt_new(&before);
            assert!(bg.state().tids.contains(&child_tid));
            assert!(sys::is_idle(child_tid));

            bg.observe(Duration::from_millis(10));
            assert!(bg.is_idle());
            bg.observe(LAG_HIGH);
            assert!(!bg.is_idle());
            assert!(!sys::is_idle(sys::gettid()));
            assert!(!sys::is_idle(child_tid));
            // Caught up, but not held back long enough yet.
            bg.observe(Duration::ZERO);
            assert!(!bg.is_idle());
            bg.state().changed -= HOLD;
            bg.observe(LAG_LOW);
            assert!(!bg.is_idle(), "still lagging");
            bg.observe(Duration::from_millis(1));
            assert!(bg.is_idle());
            assert!(sys::is_idle(child_tid));
            tx.send(()).unwrap();
            child.join().unwrap();
            // Joined is not yet reaped: wait until the kernel has let it go.
            for _ in 0..200 {
                if !Background::threads().contains(&child_tid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            // The child is gone: leaving drops it and keeps the writer's own.
            // (Tests running beside this one may have started SQLite workers
            // of their own meanwhile: only these two are checked.)
            bg.observe(LAG_HIGH);
            assert_eq!(bg.state().tids.first(), Some(&sys::gettid()));
            assert!(!bg.state().tids.contains(&child_tid));
            assert!(!sys::is_idle(sys::gettid()));
            // Called out by someone waiting: normal at once, and held.
            bg.state().changed -= HOLD;
            bg.observe(Duration::ZERO);
            assert!(bg.is_idle());
            bg.hurry();
            assert!(!bg.is_idle());
            assert!(!sys::is_idle(sys::gettid()));
            bg.observe(Duration::ZERO);
            assert!(!bg.is_idle(), "held after a hurry");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn threads_lists_this_one() {
        assert!(Background::threads().contains(&sys::gettid()));
    }
}
