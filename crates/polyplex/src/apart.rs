//! A streamed chat request for several choices (`n` > 1) served by a
//! provider that gives one a request (Anthropic, Bedrock, Cohere, Claude on
//! Vertex: [`polyplex_providers::Protocol::answers_n`]).
//!
//! The executor opens one upstream stream per choice
//! ([`polyplex_providers::split_choices`]), each up to its first chunk (one
//! that fails fails the attempt, which then retries or fails over whole,
//! as a unary request's parts do), and [`merge`]s them into one stream as
//! OpenAI sends it for `n`: one id, model and `created` (the first part's),
//! each part's chunks with its choice's `index`, in the order they arrive,
//! then one usage chunk with the parts' tokens added up (a part whose
//! upstream reported none is counted, as the gateway counts any stream) and
//! one `[DONE]` once every part has ended.
//!
//! The merged stream is OpenAI SSE text and reaches the relay like an
//! OpenAI-protocol upstream's; its decoder ([`Merged`]) passes the chunks on
//! as they are and takes the usage and any failure from the merge directly
//! (shared state, not text), so neither is read back from JSON and an
//! error keeps its kind and status.

use bytes::Bytes;
use futures::stream::{self, BoxStream, SelectAll};
use futures::StreamExt;
use polyplex_providers::sse::{Event, Parser};
use polyplex_providers::{
    openai_compat, Endpoint, Reply, StreamDecoder, StreamItem, StreamSummary,
};
use polyplex_types::{GatewayError, JsonMap, Usage};
use serde_json::Value;
use std::sync::{Arc, Mutex};

type Body = BoxStream<'static, Result<Bytes, hyper::Error>>;
/// A part's body, its reads tagged with the part's index; `None` once it ended.
type Tagged = BoxStream<'static, (usize, Option<Result<Bytes, hyper::Error>>)>;

/// One choice's upstream stream, opened: its first items decoded.
pub struct Part {
    pub body: Body,
    pub parser: Parser,
    pub decoder: Box<dyn StreamDecoder>,
    pub pending: Vec<StreamItem>,
}

/// What the merge hands its decoder: the parts' usage added up and its
/// chunk at the end, or the failure that ended it.
#[derive(Default)]
struct Shared {
    usage: Option<(Usage, Reply)>,
    error: Option<GatewayError>,
}

fn shared(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The event that tells [`Merged`] the merge failed (the error itself is in
/// [`Shared`]).
const FAILED: &[u8] = b"event: error\ndata: {}\n\n";

/// One part's decoding state.
struct Choice {
    parser: Parser,
    decoder: Box<dyn StreamDecoder>,
    usage: Option<Usage>,
    done: bool,
}

/// The parts' streams, read as they come, written out as one.
struct Merge {
    choices: Vec<Choice>,
    bodies: SelectAll<Tagged>,
    /// The first part's id, `created` and model, which every chunk carries.
    head: Option<(Value, Value, Value)>,
    endpoint: Endpoint,
    /// Choices in each part's answer (part `i`'s choice `j` is `i * choices_each + j`).
    choices_each: u64,
    /// Each part's request, counted for a part whose upstream reported no
    /// usage.
    requests: Vec<JsonMap>,
    shared: Arc<Mutex<Shared>>,
    events: Vec<Event>,
    finished: bool,
}

impl Merge {
    /// Part `i`'s items, written out; the end once every part is done
    /// (after the token encoding is loaded, if the end counts).
    async fn take(&mut self, i: usize, items: Vec<StreamItem>, out: &mut Vec<u8>) {
        for item in items {
            match item {
                StreamItem::Chunk(b) => self.chunk(i, &b, out),
                StreamItem::Usage(u, _) => self.choices[i].usage = Some(u),
                StreamItem::Done => self.choices[i].done = true,
            }
        }
        if self.finished || !self.choices.iter().all(|c| c.done) {
            return;
        }
        let counts = (self.choices.iter())
            .any(|c| crate::tokens::usage_counts(c.usage.as_ref(), c.decoder.as_ref()));
        if counts && !crate::tokens::loaded() {
            crate::tokens::ready().await;
        }
        self.end(out);
    }

    /// A part's chunk with its choice's index and the stream's id.
    fn chunk(&mut self, i: usize, b: &[u8], out: &mut Vec<u8>) {
        let Ok(mut c) = serde_json::from_slice::<JsonMap>(b) else {
            // Decoders write objects; anything else goes on as it is.
            frame(b, out);
            return;
        };
        let head = self.head.get_or_insert_with(|| {
            let get = |k: &str| c.get(k).cloned().unwrap_or(Value::Null);
            (get("id"), get("created"), get("model"))
        });
        for (k, v) in [("id", &head.0), ("created", &head.1), ("model", &head.2)] {
            if let Some(slot) = c.get_mut(k) {
                *slot = v.clone();
            }
        }
        if let Some(Value::Array(list)) = c.get_mut("choices") {
            for choice in list.iter_mut().filter_map(Value::as_object_mut) {
                let own = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
                choice.insert(
                    "index".into(),
                    Value::from(i as u64 * self.choices_each + own),
                );
            }
        }
        match serde_json::to_vec(&c) {
            Ok(text) => frame(&text, out),
            Err(_) => frame(b, out),
        }
    }

    /// Every part is done: the usage added up, and the end.
    fn end(&mut self, out: &mut Vec<u8>) {
        let mut sum = Usage::default();
        for (c, request) in self.choices.iter().zip(&self.requests) {
            let mut u = c.usage.unwrap_or_else(|| {
                let text = c.decoder.summary().completion_text;
                crate::tokens::stream_estimate(self.endpoint, request, &text)
            });
            crate::tokens::stream_reasoning(&mut u, c.decoder.as_ref());
            sum = sum.plus(&u);
        }
        let (id, created, model) = self.head.clone().unwrap_or_default();
        let mut chunk = polyplex_providers::usage_chunk(
            id.as_str().unwrap_or_default(),
            created.as_u64().unwrap_or_default(),
            model.as_str().unwrap_or_default(),
            &sum,
        );
        if self.endpoint == Endpoint::Completions {
            let mut m = chunk.into_map();
            m.insert("object".into(), Value::from("text_completion"));
            chunk = Reply::Map(m);
        }
        shared(&self.shared).usage = Some((sum, chunk));
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.finished = true;
    }

    fn fail(&mut self, e: GatewayError, out: &mut Vec<u8>) {
        shared(&self.shared).error = Some(e);
        out.extend_from_slice(FAILED);
        self.finished = true;
    }

    /// The merged stream's next bytes: at least one event, or the end.
    async fn next(&mut self) -> Option<Result<Bytes, hyper::Error>> {
        let mut out = Vec::new();
        while !self.finished && out.is_empty() {
            let Some((i, read)) = self.bodies.next().await else {
                // Every body ended and some part never said it was done.
                let e =
                    GatewayError::internal("a stream asked apart ended before every choice did");
                self.fail(e, &mut out);
                break;
            };
            let mut items = Vec::new();
            match read {
                Some(Ok(bytes)) => {
                    if self.choices[i].done {
                        continue;
                    }
                    let choice = &mut self.choices[i];
                    choice.parser.feed(&bytes, &mut self.events);
                    let failed = self
                        .events
                        .drain(..)
                        .find_map(|ev| choice.decoder.on_event(&ev, &mut items).err());
                    if let Some(e) = failed {
                        self.fail(e, &mut out);
                        break;
                    }
                }
                Some(Err(e)) => {
                    self.finished = true;
                    return Some(Err(e));
                }
                None if self.choices[i].done => continue,
                None => {
                    if let Err(e) = self.choices[i].decoder.finish(&mut items) {
                        self.fail(e, &mut out);
                        break;
                    }
                    // A decoder whose stream may end without a closing event.
                    self.choices[i].done = true;
                }
            }
            self.take(i, items, &mut out).await;
        }
        (!out.is_empty()).then(|| Ok(Bytes::from(out)))
    }
}

fn frame(json: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}

/// The decoder of a merged stream: its chunks as they are, the usage and a
/// failure from the merge.
pub struct Merged {
    inner: openai_compat::Decoder,
    shared: Arc<Mutex<Shared>>,
    saw_usage: bool,
}

impl StreamDecoder for Merged {
    fn on_event(&mut self, event: &Event, out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        if event.event.as_deref() == Some("error") {
            let e = shared(&self.shared).error.take();
            return Err(e.unwrap_or_else(|| GatewayError::internal("a stream asked apart failed")));
        }
        if event.data.trim() == "[DONE]" {
            if let Some((u, chunk)) = shared(&self.shared).usage.take() {
                self.saw_usage = true;
                out.push(StreamItem::Usage(u, chunk));
            }
        }
        self.inner.on_event(event, out)
    }

    fn finish(&mut self, out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        self.inner.finish(out)
    }

    fn saw_usage(&self) -> bool {
        self.saw_usage
    }

    fn summary(&self) -> StreamSummary {
        self.inner.summary()
    }
}

/// The parts' streams as one: its body, parser and decoder, and the items
/// decoded from what the parts have sent so far (their first chunks) as
/// its pending ones.
pub async fn merge(
    parts: Vec<Part>,
    endpoint: Endpoint,
    choices_each: u64,
    provider: &str,
    requests: Vec<JsonMap>,
) -> Result<Part, GatewayError> {
    let shared_state = Arc::new(Mutex::new(Shared::default()));
    let mut firsts = Vec::with_capacity(parts.len());
    let mut choices = Vec::with_capacity(parts.len());
    let mut bodies = SelectAll::new();
    for (i, p) in parts.into_iter().enumerate() {
        firsts.push(p.pending);
        choices.push(Choice {
            parser: p.parser,
            decoder: p.decoder,
            usage: None,
            done: false,
        });
        bodies.push(
            p.body
                .map(move |r| (i, Some(r)))
                .chain(stream::once(async move { (i, None) }))
                .boxed(),
        );
    }
    let mut m = Merge {
        choices,
        bodies,
        head: None,
        endpoint,
        choices_each,
        requests,
        shared: shared_state.clone(),
        events: Vec::new(),
        finished: false,
    };
    let mut first = Vec::new();
    for (i, items) in firsts.into_iter().enumerate() {
        m.take(i, items, &mut first).await;
    }
    let mut decoder = Merged {
        inner: openai_compat::Decoder::new(endpoint, provider),
        shared: shared_state,
        saw_usage: false,
    };
    let mut parser = Parser::new();
    let mut events = Vec::new();
    let mut pending = Vec::new();
    parser.feed(&first, &mut events);
    for ev in &events {
        decoder.on_event(ev, &mut pending)?;
    }
    let body = stream::unfold(m, |mut m| async move { m.next().await.map(|r| (r, m)) }).boxed();
    Ok(Part {
        body,
        parser,
        decoder: Box::new(decoder),
        pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A part whose upstream sends `frames` (OpenAI SSE text) in the given
    /// reads, decoded by the pass-through decoder; nothing read yet.
    fn part(reads: &[&str]) -> Part {
        let reads: Vec<Result<Bytes, hyper::Error>> = reads
            .iter()
            .map(|r| Ok(Bytes::copy_from_slice(r.as_bytes())))
            .collect();
        Part {
            body: stream::iter(reads).boxed(),
            parser: Parser::new(),
            decoder: Box::new(openai_compat::Decoder::new(Endpoint::Chat, "p")),
            pending: Vec::new(),
        }
    }

    fn chunk(id: &str, text: &str, finish: Option<&str>) -> String {
        let c = serde_json::json!({"id": id, "object": "chat.completion.chunk", "created": 7,
            "model": "m", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    }

    fn usage(id: &str, prompt: u64, completion: u64) -> String {
        let c = serde_json::json!({"id": id, "object": "chat.completion.chunk", "created": 7, "model": "m",
            "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}});
        format!("data: {c}\n\n")
    }

    /// Everything the merged stream yields, decoded: its chunks and usage.
    async fn drain(parts: Vec<Part>) -> (Vec<JsonMap>, Option<Usage>, Result<bool, GatewayError>) {
        let request =
            serde_json::json!({"messages": [{"role": "user", "content": "Name a color"}]});
        let request = request.as_object().unwrap().clone();
        let n = parts.len();
        let Part {
            mut body,
            mut parser,
            mut decoder,
            pending: mut items,
        } = merge(parts, Endpoint::Chat, 1, "p", vec![request; n])
            .await
            .unwrap();
        let mut events = Vec::new();
        let mut failed = None;
        while let Some(read) = body.next().await {
            parser.feed(&read.unwrap(), &mut events);
            for ev in events.drain(..) {
                if let Err(e) = decoder.on_event(&ev, &mut items) {
                    failed = Some(e);
                }
            }
        }
        let (mut chunks, mut usage, mut done) = (Vec::new(), None, false);
        for it in items {
            match it {
                StreamItem::Chunk(b) => chunks.push(serde_json::from_slice(&b).unwrap()),
                StreamItem::Usage(u, c) => {
                    assert!(c.into_map()["choices"].as_array().unwrap().is_empty());
                    usage = Some(u);
                }
                StreamItem::Done => done = true,
            }
        }
        (chunks, usage, failed.map_or(Ok(done), Err))
    }

    fn text_of(chunks: &[JsonMap], index: u64) -> String {
        chunks
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap())
            .filter(|c| c["index"] == index)
            .filter_map(|c| c["delta"]["content"].as_str())
            .collect()
    }

    #[tokio::test]
    async fn parts_become_one_stream_of_indexed_choices() {
        let a = part(&[
            &chunk("a", "red ", None),
            &(chunk("a", "sky", Some("stop")) + &usage("a", 4, 2) + "data: [DONE]\n\n"),
        ]);
        let b = part(&[
            &chunk("b", "blue ", None),
            &chunk("b", "sea", Some("stop")),
            &usage("b", 4, 3),
        ]);
        let (chunks, usage, done) = drain(vec![a, b]).await;
        assert!(done.unwrap(), "one [DONE] at the end");
        assert_eq!(text_of(&chunks, 0), "red sky");
        assert_eq!(text_of(&chunks, 1), "blue sea");
        assert!(chunks
            .iter()
            .all(|c| c["id"] == "a" && c["created"] == 7 && c["model"] == "m"));
        let finished = chunks
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap())
            .filter(|c| c["finish_reason"] == "stop")
            .count();
        assert_eq!(finished, 2, "each choice says why it ended");
        let u = usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.estimated),
            (8, 5, false)
        );
    }

    #[tokio::test]
    async fn a_part_without_usage_is_counted() {
        let a = part(&[&(chunk("a", "one two three", Some("stop")) + &usage("a", 4, 3))]);
        let b = part(&[&chunk("b", "one two three", Some("stop"))]);
        let (_, usage, done) = drain(vec![a, b]).await;
        assert!(done.unwrap());
        let u = usage.unwrap();
        assert!(u.estimated);
        let prompt = crate::tokens::prompt(
            Endpoint::Chat,
            serde_json::json!({"messages": [
            {"role": "user", "content": "Name a color"}]})
            .as_object()
            .unwrap(),
        );
        assert_eq!(
            u.prompt_tokens,
            4 + prompt,
            "the counted part's prompt is the gateway's count"
        );
        assert_eq!(u.completion_tokens, 3 + 3);
    }

    #[tokio::test]
    async fn a_part_that_fails_fails_the_stream_with_its_error() {
        let a = part(&[
            &chunk("a", "red", None),
            "data: {\"error\": {\"message\": \"overloaded\", \"type\": \"server_error\"}}\n\n",
        ]);
        let b = part(&[&chunk("b", "blue", Some("stop")), "data: [DONE]\n\n"]);
        let (_, usage, done) = drain(vec![a, b]).await;
        let e = done.unwrap_err();
        assert!(e.message.contains("overloaded"), "{}", e.message);
        assert!(usage.is_none());
    }

    #[tokio::test]
    async fn a_part_cut_short_fails_the_stream() {
        let a = part(&[&chunk("a", "red", None)]);
        let b = part(&[&chunk("b", "blue", Some("stop")), "data: [DONE]\n\n"]);
        let (_, _, done) = drain(vec![a, b]).await;
        assert!(done
            .unwrap_err()
            .message
            .contains("ended before it was complete"));
    }
}
