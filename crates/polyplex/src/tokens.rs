//! Token counts for when an upstream does not report usage, with tiktoken's
//! o200k_base encoding (GPT-4o's). For other model families it is an
//! estimate, and the usage record says so (`estimated`).

use polyplex_providers::{Endpoint, Reply, StreamDecoder, StreamItem};
use polyplex_types::{JsonMap, Usage};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;
use tokio::sync::Notify;

/// A value that takes long to build (the encoding: about 50 MiB and
/// 100–200 ms), built once, on first need, on a thread of its own: a
/// serving thread runs many connections on one single-threaded runtime,
/// and building it there would pause them all. A request that is about to
/// count awaits [`Slow::ready`]; code that may block calls [`Slow::wait`].
pub(crate) struct Slow<T: 'static> {
    value: OnceLock<T>,
    started: AtomicBool,
    built: Notify,
    build: fn() -> T,
    /// Its thread's name, and what it is (for the log).
    thread: &'static str,
    what: &'static str,
}

impl<T: Send + Sync + 'static> Slow<T> {
    pub(crate) const fn new(thread: &'static str, what: &'static str, build: fn() -> T) -> Slow<T> {
        Slow {
            value: OnceLock::new(),
            started: AtomicBool::new(false),
            built: Notify::const_new(),
            build,
            thread,
            what,
        }
    }

    pub(crate) fn get(&self) -> Option<&T> {
        self.value.get()
    }

    /// The value, built here if no one has (blocking this thread until it
    /// is, also while the builder thread runs).
    pub(crate) fn wait(&self) -> &T {
        self.value.get_or_init(|| {
            let t = std::time::Instant::now();
            let v = (self.build)();
            tracing::info!(ms = t.elapsed().as_millis() as u64, "{} loaded", self.what);
            v
        })
    }

    /// Starts the build on its own thread unless it is built or started;
    /// whether this call started it.
    pub(crate) fn start(&'static self) -> bool {
        if self.value.get().is_some() || self.started.swap(true, Ordering::AcqRel) {
            return false;
        }
        tracing::info!(
            thread = self.thread,
            "{} loading on a thread of its own",
            self.what
        );
        let build = move || {
            // Waiters hear of the end even if the build panicked (they
            // then build it themselves, and a later need starts a thread
            // again).
            struct Told<T: 'static>(&'static Slow<T>);
            impl<T: 'static> Drop for Told<T> {
                fn drop(&mut self) {
                    if self.0.value.get().is_none() {
                        self.0.started.store(false, Ordering::Release);
                    }
                    self.0.built.notify_waiters();
                }
            }
            let _told = Told(self);
            self.wait();
        };
        if let Err(e) = std::thread::Builder::new()
            .name(self.thread.into())
            .spawn(build)
        {
            tracing::warn!(error = %e, thread = self.thread, "cannot start a thread; the first to need the value builds it");
            self.started.store(false, Ordering::Release);
            return false;
        }
        true
    }

    /// The value, once built by its thread; the awaiting task's thread
    /// serves its other connections meanwhile.
    pub(crate) async fn ready(&'static self) -> &'static T {
        loop {
            if let Some(v) = self.value.get() {
                return v;
            }
            let built = self.built.notified();
            let mut built = std::pin::pin!(built);
            built.as_mut().enable();
            if let Some(v) = self.value.get() {
                return v;
            }
            self.start();
            if !self.started.load(Ordering::Acquire) {
                // No thread could be started: build it here after all.
                return self.wait();
            }
            built.await;
            if self.value.get().is_none() {
                // The builder thread ended without it (it panicked).
                return self.wait();
            }
        }
    }
}

/// The encoding, loaded on first need, not at startup: most deployments
/// never need it (upstreams report usage) — unless the configuration routes
/// by cost, which counts every request's prompt ([`warm_in_background`]).
/// Requests wait for it with [`ready`] before they count (`routing::Facts`,
/// the answer's and the stream's usage), so no serving thread loads it.
static BPE: Slow<Option<CoreBPE>> = Slow::new("polyplex-tokens", "token encoding", load_bpe);

fn load_bpe() -> Option<CoreBPE> {
    tiktoken_rs::o200k_base().ok()
}

/// The encoding, loaded here if it is not yet: through `block_in_place` on
/// a multi-thread runtime, inline elsewhere. Requests on serving threads
/// have awaited [`ready`] before they get here.
fn bpe() -> Option<&'static CoreBPE> {
    if let Some(b) = BPE.get() {
        return b.as_ref();
    }
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| BPE.wait()).as_ref()
        }
        _ => BPE.wait().as_ref(),
    }
}

/// Whether the encoding is loaded (or failed to, counts then falling back
/// to bytes / 4): a count no longer waits for it.
pub fn loaded() -> bool {
    BPE.get().is_some()
}

/// Waits, without blocking this thread, until the encoding is loaded
/// (starting its load if no one has).
pub async fn ready() {
    BPE.ready().await;
}

/// Runs `work` (a count, and the record it completes) on a blocking
/// thread: it may load the encoding, or wait for its load, which no serving
/// thread does. Work that never runs there — a runtime shut down without
/// waiting for its blocking pool (`shutdown_background`, `shutdown_timeout`)
/// drops what is handed to it then, as a request's future dropped in that
/// shutdown does — runs as it is dropped: once, whichever way, and nothing
/// is lost. Outside a runtime, here.
pub fn off_the_serving_thread(work: impl FnOnce() + Send + 'static) {
    struct Once<W: FnOnce()>(Option<W>);
    impl<W: FnOnce()> Drop for Once<W> {
        fn drop(&mut self) {
            if let Some(work) = self.0.take() {
                work();
            }
        }
    }
    let once = Once(Some(work));
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(move || drop(once))),
        Err(_) => drop(once),
    }
}

/// Starts loading the encoding on a thread of its own (cost routing counts
/// every request's prompt, so it is loaded at start).
pub fn warm_in_background() {
    if BPE.start() {
        tracing::info!(
            "cost routing counts every prompt: the token encoding loads ahead of the first"
        );
    }
}

pub fn count(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match bpe() {
        Some(b) => b.encode_ordinary(text).len() as u64,
        None => text.len().div_ceil(4) as u64,
    }
}

fn content_text(v: Option<&Value>, out: &mut String) {
    match v {
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Array(parts)) => {
            for p in parts {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    out.push_str(t);
                }
            }
        }
        _ => {}
    }
}

/// Prompt tokens of a chat request, by OpenAI's published formula: 3 per
/// message plus its role and content, 3 to prime the reply; images count 85
/// (the low-detail tile), tools by their JSON.
pub fn chat_prompt(body: &JsonMap) -> u64 {
    let mut n = 3;
    let mut text = String::new();
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        n += 3;
        text.clear();
        if let Some(r) = m.get("role").and_then(Value::as_str) {
            text.push_str(r);
        }
        content_text(m.get("content"), &mut text);
        if let Some(calls) = m.get("tool_calls") {
            text.push_str(&calls.to_string());
        }
        n += count(&text);
        if let Some(parts) = m.get("content").and_then(Value::as_array) {
            n += 85
                * parts
                    .iter()
                    .filter(|p| p.get("type").and_then(Value::as_str) == Some("image_url"))
                    .count() as u64;
        }
    }
    if let Some(tools) = body.get("tools") {
        n += count(&tools.to_string());
    }
    n
}

/// The usage of one upstream stream that reported none: `request`'s
/// prompt and the generated text (its decoder's summary), counted.
pub fn stream_estimate(endpoint: Endpoint, request: &JsonMap, completion_text: &str) -> Usage {
    Usage {
        prompt_tokens: prompt(endpoint, request),
        completion_tokens: count(completion_text),
        estimated: true,
        ..Usage::default()
    }
}

/// A request's prompt tokens: the chat messages, or the legacy `prompt`,
/// or the embeddings `input`.
pub fn prompt(endpoint: Endpoint, request: &JsonMap) -> u64 {
    match endpoint {
        Endpoint::Chat => chat_prompt(request),
        Endpoint::Completions => input_tokens(request.get("prompt")),
        Endpoint::Embeddings => input_tokens(request.get("input")),
    }
}

pub fn input_tokens(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::String(s)) => count(s),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => count(s),
                Value::Array(t) => t.len() as u64,
                _ => 1,
            })
            .sum(),
        _ => 0,
    }
}

/// Completion tokens of a non-streamed response (choices' content and tool calls, or `text`).
pub fn response_completion(resp: &JsonMap) -> u64 {
    count(&completion_text(resp))
}

/// Reasoning tokens of an answer whose upstream counts the thinking in its
/// output tokens but not apart (Claude): the output less what was visible,
/// at least the thinking's own text (Claude 4 gives a summary of a longer
/// thinking, so the output's share is the better measure), at most the
/// output. Both counts are o200k's, so this is an estimate.
pub fn reasoning_estimate(completion: u64, visible: &str, thinking: &str) -> u64 {
    completion
        .saturating_sub(count(visible))
        .max(count(thinking))
        .min(completion)
}

/// Whether `u` is a thinking model's usage that does not count its
/// reasoning apart (its output was counted).
fn reasoning_unreported(u: &Usage) -> bool {
    u.reasoning_tokens == 0 && u.completion_tokens > 0
}

/// Sets the reasoning tokens of `u` when the model thought and its
/// upstream did not count them apart; whether it did.
pub fn stream_reasoning(u: &mut Usage, decoder: &dyn StreamDecoder) -> bool {
    if !reasoning_unreported(u) || !decoder.reasoned() {
        return false;
    }
    let s = decoder.summary();
    u.reasoning_tokens = reasoning_estimate(
        u.completion_tokens,
        &s.completion_text,
        s.reasoning.as_deref().unwrap_or(""),
    );
    true
}

/// The same for a non-streamed chat answer whose messages carry thinking
/// (`reasoning_content` or `thinking_blocks`).
pub fn response_reasoning(u: &mut Usage, resp: &JsonMap) -> bool {
    if !reasoning_unreported(u) {
        return false;
    }
    let Some(thinking) = thinking(resp) else {
        return false;
    };
    u.reasoning_tokens = reasoning_estimate(u.completion_tokens, &completion_text(resp), &thinking);
    true
}

/// The thinking text of a chat answer's messages, if they thought (empty
/// for thinking that came redacted).
fn thinking(resp: &JsonMap) -> Option<String> {
    let mut thinking = String::new();
    let mut thought = false;
    for m in resp
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("message"))
    {
        if let Some(t) = m.get("reasoning_content").and_then(Value::as_str) {
            thinking.push_str(t);
            thought = true;
        }
        thought |= m
            .get("thinking_blocks")
            .and_then(Value::as_array)
            .is_some_and(|b| !b.is_empty());
    }
    thought.then_some(thinking)
}

/// Whether finishing a non-streamed answer's usage counts tokens: the
/// upstream reported none, or a thinking model's reasoning is estimated
/// (`respond::finish_usage`). Those that do await [`ready`] first.
pub fn answer_counts(endpoint: Endpoint, upstream: Option<&Usage>, reply: &Reply) -> bool {
    let Some(u) = upstream else {
        return true;
    };
    if endpoint != Endpoint::Chat || !reasoning_unreported(u) {
        return false;
    }
    match reply {
        Reply::Map(m) => thinking(m).is_some(),
        Reply::Raw(r) => r.get("choices").is_some_and(|c| {
            ["reasoning_content", "thinking_blocks"]
                .iter()
                .any(|k| memchr::memmem::find(c.as_bytes(), k.as_bytes()).is_some())
        }),
    }
}

/// Whether handling a stream's next `items` counts tokens: its usage is
/// estimated at the end (`usage` says whether the upstream reported it
/// before them), or a thinking model's reasoning is. Those that do await
/// [`ready`] first.
pub fn stream_counts(mut usage: bool, items: &[StreamItem], decoder: &dyn StreamDecoder) -> bool {
    for item in items {
        match item {
            StreamItem::Usage(u, _) if usage_counts(Some(u), decoder) => return true,
            StreamItem::Usage(..) => usage = true,
            StreamItem::Done if !usage => return true,
            _ => {}
        }
    }
    false
}

/// Whether a stream that ended with the upstream's `usage` (or none)
/// counts tokens.
pub fn usage_counts(usage: Option<&Usage>, decoder: &dyn StreamDecoder) -> bool {
    usage.is_none_or(|u| reasoning_unreported(u) && decoder.reasoned())
}

/// The generated text of a non-streamed response: choices' content and
/// tool calls, or `text`.
fn completion_text(resp: &JsonMap) -> String {
    let mut text = String::new();
    for c in resp
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = c.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(m) = c.get("message") {
            content_text(m.get("content"), &mut text);
            for tc in m
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(f) = tc.get("function") {
                    text.push_str(f.get("name").and_then(Value::as_str).unwrap_or(""));
                    text.push_str(f.get("arguments").and_then(Value::as_str).unwrap_or(""));
                }
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Work handed off the serving thread runs once, whether the blocking
    /// pool runs it or a runtime shutting down drops it unstarted (a
    /// request's future dropped in that shutdown hands its record off then).
    #[test]
    fn work_off_the_serving_thread_runs_once_even_at_shutdown() {
        use std::sync::mpsc;
        struct HandsOff(mpsc::Sender<&'static str>);
        impl Drop for HandsOff {
            fn drop(&mut self) {
                let tx = self.0.clone();
                off_the_serving_thread(move || tx.send("dropped").unwrap());
            }
        }
        let (tx, rx) = mpsc::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let served = tx.clone();
            off_the_serving_thread(move || served.send("served").unwrap());
            let held = HandsOff(tx.clone());
            tokio::spawn(async move {
                let _held = held;
                std::future::pending::<()>().await
            });
            tokio::task::yield_now().await;
        });
        rt.shutdown_background();
        drop(tx);
        let mut got: Vec<_> = rx.iter().collect();
        got.sort_unstable();
        assert_eq!(got, ["dropped", "served"]);
        // Outside a runtime: here and now.
        let (tx, rx) = mpsc::channel();
        off_the_serving_thread(move || tx.send(1).unwrap());
        assert_eq!(rx.try_recv(), Ok(1));
    }

    /// The waiting thread (one serving thread's runtime) serves its other
    /// tasks while the value is built elsewhere; it is built once for all.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_value_is_built_off_the_waiting_thread() {
        use std::sync::atomic::AtomicU32;
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        static BUILDS: AtomicU32 = AtomicU32::new(0);
        static SLOW: Slow<u32> = Slow::new("polyplex-test-slow", "test value", || {
            std::thread::sleep(Duration::from_millis(300));
            BUILDS.fetch_add(1, Ordering::SeqCst);
            7
        });
        let done = Arc::new(AtomicBool::new(false));
        let ticker = tokio::spawn({
            let done = done.clone();
            async move {
                let (mut last, mut worst, mut ticks) = (Instant::now(), Duration::ZERO, 0);
                while !done.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    worst = worst.max(last.elapsed());
                    last = Instant::now();
                    ticks += 1;
                }
                (worst, ticks)
            }
        });
        let t = Instant::now();
        let (a, b) = tokio::join!(SLOW.ready(), SLOW.ready());
        assert_eq!((*a, *b), (7, 7));
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        done.store(true, Ordering::SeqCst);
        let (worst, ticks) = ticker.await.unwrap();
        assert!(ticks >= 10, "the thread went on ticking: {ticks}");
        assert!(
            worst < Duration::from_millis(200),
            "never paused for the build: {worst:?}"
        );
        assert_eq!(*SLOW.ready().await, 7);
        assert_eq!(*SLOW.wait(), 7);
        assert!(!SLOW.start(), "built: nothing to start");
        assert_eq!(BUILDS.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn what_counts() {
        let plain = json!({"choices": [{"message": {"content": "hi"}}]});
        let thought =
            json!({"choices": [{"message": {"content": "hi", "reasoning_content": "hm"}}]});
        let map = |v: &Value| Reply::Map(v.as_object().unwrap().clone());
        let used = Usage {
            prompt_tokens: 5,
            completion_tokens: 9,
            ..Usage::default()
        };
        let reasoned = Usage {
            reasoning_tokens: 4,
            ..used
        };
        // No usage from the upstream: counted.
        assert!(answer_counts(Endpoint::Chat, None, &map(&plain)));
        assert!(answer_counts(Endpoint::Embeddings, None, &map(&plain)));
        // Reported usage: counted only for thinking not counted apart.
        assert!(!answer_counts(Endpoint::Chat, Some(&used), &map(&plain)));
        assert!(answer_counts(Endpoint::Chat, Some(&used), &map(&thought)));
        assert!(!answer_counts(
            Endpoint::Chat,
            Some(&reasoned),
            &map(&thought)
        ));
        let raw = |v: &Value| {
            Reply::Raw(polyplex_providers::RawReply::parse(v.to_string().into()).unwrap())
        };
        assert!(!answer_counts(Endpoint::Chat, Some(&used), &raw(&plain)));
        assert!(answer_counts(Endpoint::Chat, Some(&used), &raw(&thought)));

        let decoder = polyplex_providers::openai_compat::Decoder::new(Endpoint::Chat, "p");
        let chunk = StreamItem::Chunk(bytes::Bytes::from_static(b"{}"));
        let usage = StreamItem::Usage(used, map(&plain));
        // Chunks alone count nothing; the end without usage does.
        assert!(!stream_counts(
            false,
            std::slice::from_ref(&chunk),
            &decoder
        ));
        assert!(stream_counts(false, &[StreamItem::Done], &decoder));
        assert!(!stream_counts(true, &[StreamItem::Done], &decoder));
        // Usage just before the end (one read): nothing counted.
        assert!(!stream_counts(
            false,
            &[chunk, usage, StreamItem::Done],
            &decoder
        ));
        assert!(usage_counts(None, &decoder));
        assert!(!usage_counts(Some(&used), &decoder));
    }

    #[test]
    fn counts_with_o200k() {
        assert_eq!(count(""), 0);
        assert_eq!(count("hello world"), 2);
        let body = json!({"messages": [{"role": "user", "content": "hello world"}]});
        // 3 priming + 3 per message + "user" + "hello world"
        assert_eq!(
            chat_prompt(body.as_object().unwrap()),
            3 + 3 + count("userhello world")
        );
        let resp = json!({"choices": [{"message": {"content": "hello world"}}]});
        assert_eq!(response_completion(resp.as_object().unwrap()), 2);
        assert_eq!(input_tokens(Some(&json!(["hello world", [1, 2, 3]]))), 5);
    }

    #[test]
    fn reasoning_is_the_output_not_seen() {
        // 40 output tokens, 2 of them visible: 38 were thinking, though its
        // (summarised) text counts fewer.
        assert_eq!(reasoning_estimate(40, "hello world", "thinking hard"), 38);
        // The thinking's own text when the output says less (tokenisers differ).
        assert_eq!(reasoning_estimate(3, "hello world", "thinking it over"), 3);
        assert_eq!(reasoning_estimate(10, "hello world", "thinking"), 8);
        assert_eq!(reasoning_estimate(2, "hello world", ""), 0);

        let thought = json!({"choices": [{"message": {"content": "hello world",
            "reasoning_content": "thinking hard", "thinking_blocks": [{"type": "thinking"}]}}]});
        let mut u = Usage {
            completion_tokens: 40,
            ..Usage::default()
        };
        assert!(response_reasoning(&mut u, thought.as_object().unwrap()));
        assert_eq!(u.reasoning_tokens, 38);
        // Redacted thinking has no text and still took output tokens.
        let redacted = json!({"choices": [{"message": {"content": "hello world",
            "thinking_blocks": [{"type": "redacted_thinking", "data": "x"}]}}]});
        let mut u = Usage {
            completion_tokens: 40,
            ..Usage::default()
        };
        assert!(response_reasoning(&mut u, redacted.as_object().unwrap()));
        assert_eq!(u.reasoning_tokens, 38);
        // No thinking, or counted by the upstream already: left alone.
        let plain = json!({"choices": [{"message": {"content": "hello world"}}]});
        let mut u = Usage {
            completion_tokens: 40,
            ..Usage::default()
        };
        assert!(!response_reasoning(&mut u, plain.as_object().unwrap()));
        assert_eq!(u.reasoning_tokens, 0);
        let mut u = Usage {
            completion_tokens: 40,
            reasoning_tokens: 5,
            ..Usage::default()
        };
        assert!(!response_reasoning(&mut u, thought.as_object().unwrap()));
        assert_eq!(u.reasoning_tokens, 5);
    }
}
