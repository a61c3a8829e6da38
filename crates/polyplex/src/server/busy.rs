//! Busy-polling on the serving threads (`[server] busy_poll_us`).
//!
//! At low concurrency most of the time a proxy adds is not its own work but
//! the kernel putting its thread to sleep in `epoll_wait` and waking it
//! again — twice per request (the client's request, the upstream's answer),
//! and in a virtual machine each wake-up is an interrupt through the
//! hypervisor. After every request a serving thread therefore keeps polling
//! its sockets (`epoll_wait` with a zero timeout) for a short window instead
//! of sleeping: the upstream's answer and the client's next request are
//! picked up without a wake-up. Between polls it calls `sched_yield`, so any
//! other runnable thread on the same CPU goes first and a busy machine loses
//! nothing to the spinning; once the window passes with no request, the
//! thread sleeps as usual. The cost is CPU while idle: at most one window per
//! request.
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
    /// The poller is parked waiting for a request.
    parked: Cell<bool>,
    wake: tokio::sync::Notify,
}

/// Notes that the current thread began or answered a request. Outside a
/// busy-polling serving thread this does nothing.
pub fn touch() {
    ACTIVITY.with(|a| {
        let cur = a.take();
        if let Some(act) = &cur {
            act.seq.set(act.seq.get().wrapping_add(1));
            if act.parked.replace(false) {
                act.wake.notify_one();
            }
        }
        a.set(cur);
    });
}

/// The poller of the current serving thread: runs until dropped. Must run on
/// the thread's own current-thread runtime (it registers itself in a
/// thread-local).
pub async fn poller(window: Duration) {
    let act = Rc::new(Activity {
        seq: Cell::new(0),
        parked: Cell::new(true),
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
        }
        act.parked.set(true);
        // A request that began between the last check and now has already
        // found `parked` false and not notified: look once more.
        if act.seq.get() != seen {
            act.parked.set(false);
            act.wake.notify_one();
        }
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
            touch();
            assert!(!act.parked.get(), "woken by a request");
            // While it spins, timers and other tasks still run.
            let t0 = Instant::now();
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(t0.elapsed() >= Duration::from_millis(5));
            assert!(!act.parked.get(), "still spinning inside the window");
            tokio::time::sleep(window * 3).await;
            assert!(act.parked.get(), "parked once the window passed");
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
