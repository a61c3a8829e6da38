//! Google's Gemini API passed through: a `generateContent` or
//! `streamGenerateContent` request whose every deployment takes Gemini's
//! API (Gemini's own, Gemini models on Vertex AI:
//! `Protocol::carries_generate`) goes upstream as the client wrote it (its
//! `model` member, if any, taken out: the URL names the deployment's), and
//! the answer — the response, or the stream's chunks — comes back as the
//! upstream sent it, with `usageMetadata.cost` added. Nothing is lost in
//! translation: `safetySettings`, `cachedContent`, Google's own tools
//! (code execution, URL context, Search grounding and its
//! `groundingMetadata`), thought signatures on any part, safety ratings.
//!
//! The request still goes through the gateway as chat does: keys, limits,
//! budgets, routing, retries and failover (before the first byte), one
//! usage record (endpoint `gemini`). Its chat form is what routing and
//! estimates read. A plan with a deployment of another protocol is served
//! as chat instead (`super::genai`).

use super::handlers::{ratelimit_headers, Call, Unanswered};
use super::passthrough::Recording;
use super::respond::{finish_usage, json_bytes, record_served, Served};
use crate::executor::{attempt_loop, generate_stream_once, generate_unary_once, GenerateOpen};
use crate::genai::Echo;
use crate::keys::Admitted;
use crate::routing::{Deployment, Plan};
use crate::tokens;
use crate::usage::UsageRecord;
use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use polyplex_providers::{gemini, sse, Endpoint, StreamDecoder};
use polyplex_types::{GatewayError, JsonMap, RequestBody, Usage};
use serde_json::Value;
use std::time::Instant;

/// What [`serve`] needs of the request.
pub(super) struct Asked<'a> {
    pub(super) model: &'a str,
    pub(super) stream: bool,
    /// Server-sent events (`alt=sse`), else one JSON array.
    pub(super) sse: bool,
    /// The client's body as it came.
    pub(super) body: Bytes,
    /// Its chat form (for usage estimates).
    pub(super) chat: RequestBody,
    /// Its `labels` (the request's metadata pairs).
    pub(super) metadata: Option<&'a JsonMap>,
    /// Where the response cache keeps its answer, and whether a stored one
    /// may answer it (`Cache-Control`).
    pub(super) cache: Option<(crate::cache::Key, crate::cache::Mode)>,
}

/// Serves `asked` through `plan`, whose deployments all take Gemini's API.
pub(super) async fn serve(call: &Call, asked: Asked<'_>, plan: &Plan, echo: &Echo) -> Response {
    let app = &call.app;
    // Nothing is left out on this path.
    let echo = Echo {
        dropped: Vec::new(),
        ..echo.clone()
    };
    let failed = |resp: Response| super::respond::genai_answer(resp, echo.clone(), asked.sse);
    call.tag(None, asked.metadata);
    let mut gone = Unanswered::new(call);
    gone.asked_for(asked.model, asked.stream);
    let no_one = Served::default();
    let mut admitted = match call.admit(asked.model, &[]).await {
        Ok(a) => a,
        Err(e) => {
            gone.answered = true;
            return failed(call.fail(asked.model, asked.stream, e, &no_one)).await;
        }
    };
    if let (Some(cache), Some((key, crate::cache::Mode::Use))) = (app.cache(), &asked.cache) {
        if let Some(hit) = cache.get(key).await {
            metrics::counter!("polyplex_cache_total", "result" => "hit").increment(1);
            gone.answered = true;
            call.record_hit(asked.model, asked.stream, admitted.as_ref(), &hit);
            let mut resp = if asked.stream {
                let body = crate::cache::hit_gemini_stream(&hit.body, asked.sse);
                stream_head(Response::new(Body::from(body)), asked.sse)
            } else {
                json_bytes(crate::cache::hit_body(&hit.body))
            };
            super::handlers::hit_headers(&mut resp, &hit);
            return resp;
        }
        metrics::counter!("polyplex_cache_total", "result" => "miss").increment(1);
    }
    let cache_as = asked.cache.map(|(key, _)| key);
    let body = &asked.body;
    let gone_ref = &gone;
    let resp = if asked.stream {
        let outcome = attempt_loop(app, plan, false, |d, g| async move {
            gone_ref
                .attempt(&d, generate_stream_once(app, &d, g, body))
                .await
        })
        .await;
        let served = outcome.trace;
        match outcome.result {
            Ok((open, d)) => {
                let record = call.served_record(
                    asked.model,
                    &d,
                    Usage::default(),
                    0.0,
                    served.attempts,
                    admitted.as_ref(),
                );
                let limits = admitted.as_ref().map(|a| a.limits);
                let how = Streamed {
                    sse: asked.sse,
                    chat: asked.chat,
                    cache_as,
                };
                let mut resp = relay(call, open, d, record, admitted.take(), how);
                if let Some(limits) = &limits {
                    ratelimit_headers(&mut resp, limits);
                }
                served.apply(&mut resp);
                if cache_as.is_some() {
                    super::respond::cache_missed(&mut resp);
                }
                resp
            }
            Err(e) => failed(call.fail(asked.model, true, e, &served)).await,
        }
    } else {
        let outcome = attempt_loop(app, plan, true, |d, g| async move {
            gone_ref
                .attempt(&d, generate_unary_once(app, &d, g, body))
                .await
        })
        .await;
        let served = outcome.trace;
        match outcome.result {
            Ok((bytes, d)) => {
                let protocol = d.upstream.protocol_for(Endpoint::Chat, &d.model);
                let (usage, c) = match protocol.parse_reply(
                    Endpoint::Chat,
                    &d.upstream.name,
                    &asked.chat,
                    &bytes,
                ) {
                    Ok((reply, usage)) => {
                        let (_, usage, c) =
                            finish_usage(app, &d, Endpoint::Chat, &asked.chat, reply, usage);
                        (usage, c)
                    }
                    Err(_) => (Usage::default(), 0.0),
                };
                let record = call.served_record(
                    asked.model,
                    &d,
                    usage,
                    c,
                    served.attempts,
                    admitted.as_ref(),
                );
                d.stats.on_tokens(usage.completion_tokens, record.latency);
                record_served(app, &d, record);
                let bytes = with_cost(bytes, c);
                if let (Some(cache), Some(key)) = (app.cache(), cache_as) {
                    let entry = crate::cache::Entry::served(bytes.clone(), &d, usage, Vec::new());
                    cache.put(key, entry);
                }
                let mut resp = json_bytes(bytes);
                served.apply(&mut resp);
                if cache_as.is_some() {
                    super::respond::cache_missed(&mut resp);
                }
                if let Some(a) = &admitted {
                    ratelimit_headers(&mut resp, &a.limits);
                }
                resp
            }
            Err(e) => failed(call.fail(asked.model, false, e, &served)).await,
        }
    };
    gone.answered = true;
    resp
}

/// A Gemini response (or stream chunk) with `usageMetadata.cost` added (as
/// it is, when it has no `usageMetadata` object).
fn with_cost(body: Bytes, c: f64) -> Bytes {
    let Ok(mut raw) = polyplex_providers::RawReply::parse(body.clone()) else {
        return body;
    };
    let Some(meta) = raw
        .get("usageMetadata")
        .filter(|m| m.starts_with('{'))
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
    else {
        return body;
    };
    let mut meta = meta;
    meta["cost"] = crate::usage::cost_json(c);
    if raw.set("usageMetadata", &meta).is_err() {
        return body;
    }
    raw.to_bytes()
}

/// A stream that has not reported its usage (yet): its generated text is
/// read by the protocol's decoder, for the usage estimated when it ends
/// without one.
struct Unmetered {
    decoder: Box<dyn StreamDecoder>,
    /// The request's chat form, whose prompt is counted.
    chat: RequestBody,
}

impl Unmetered {
    fn read(&mut self, data: &str) {
        let ev = sse::Event {
            event: None,
            data: data.to_owned(),
        };
        // (An event it cannot read adds nothing to the estimate.)
        let _ = self.decoder.on_event(&ev, &mut Vec::new());
    }

    /// The usage of the stream so far, counted as a chat stream's is (a
    /// count that may wait for the token encoding: not on a serving thread
    /// before it is loaded).
    fn estimate(&self) -> Usage {
        let text = self.decoder.summary().completion_text;
        tokens::stream_estimate(Endpoint::Chat, self.chat.map(), &text)
    }
}

/// How a stream is sent on, and what of the request it keeps.
struct Streamed {
    /// Server-sent events, else one JSON array.
    sse: bool,
    /// The request's chat form (for a usage estimate).
    chat: RequestBody,
    /// Where the response cache keeps the stream once it has ended well.
    cache_as: Option<crate::cache::Key>,
}

/// The passed-through stream's response: the upstream's chunks as they
/// come, each `usageMetadata` with the cost of the usage so far; recorded
/// when it ends (200), breaks (502) or the client leaves (499).
fn relay(
    call: &Call,
    open: GenerateOpen,
    d: Deployment,
    mut record: UsageRecord,
    admitted: Option<Admitted>,
    how: Streamed,
) -> Response {
    let Streamed {
        sse,
        chat,
        cache_as,
    } = how;
    record.stream = true;
    let decoder = d
        .upstream
        .protocol_for(Endpoint::Chat, &d.model)
        .stream_decoder(Endpoint::Chat, &d.upstream.name, &d.model, &chat);
    let relay = Relay {
        app: call.app.clone(),
        record: Some(Box::new(super::passthrough::metered(&call.app, &d, record))),
        started: call.started,
        open,
        d,
        _admitted: admitted,
        usage: None,
        unmetered: Some(Unmetered { decoder, chat }),
        sse,
        wrote: false,
        ended: false,
        captured: cache_as.map(|_| Vec::new()),
        cache_as,
    };
    let frames = futures::stream::unfold(relay, |mut r| async move {
        let frame = r.next_frame().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(frame), r))
    });
    stream_head(Response::new(Body::from_stream(frames)), sse)
}

/// A Gemini stream's headers: server-sent events, or one JSON array.
fn stream_head(mut resp: Response, sse: bool) -> Response {
    let kind = if sse {
        "text/event-stream"
    } else {
        "application/json"
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

struct Relay {
    app: super::App,
    open: GenerateOpen,
    d: Deployment,
    /// Writes the record, once, when the stream ends.
    record: Option<Recording>,
    /// When the request came.
    started: Instant,
    /// The key's concurrency slot, held until the stream ends.
    _admitted: Option<Admitted>,
    /// The usage the last chunk reported (Gemini's counts are cumulative).
    usage: Option<Usage>,
    /// Until a chunk reports its usage: what an estimate needs.
    unmetered: Option<Unmetered>,
    sse: bool,
    wrote: bool,
    ended: bool,
    /// What was sent so far, for the response cache (dropped past
    /// [`crate::cache::MAX_STREAM_BYTES`]).
    captured: Option<Vec<u8>>,
    /// Where the response cache keeps it.
    cache_as: Option<crate::cache::Key>,
}

impl Relay {
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if self.ended {
                return None;
            }
            if !self.open.events.is_empty() {
                let events = std::mem::take(&mut self.open.events);
                let mut out = Vec::new();
                for ev in events {
                    if let Some(e) = crate::executor::stream_error_of(&ev.data) {
                        // The upstream's own error, as it sent it.
                        let status = e["code"].as_u64().unwrap_or(502) as u16;
                        self.write(ev.data.as_bytes(), &mut out);
                        self.end(status, &mut out);
                        return Some(Bytes::from(out));
                    }
                    if let Some(u) = &mut self.unmetered {
                        u.read(&ev.data);
                    }
                    let data = self.metered(Bytes::from(ev.data));
                    self.write(&data, &mut out);
                }
                if !out.is_empty() {
                    return Some(Bytes::from(out));
                }
                continue;
            }
            let idle = self.d.upstream.idle_timeout;
            match tokio::time::timeout(idle, self.open.body.next()).await {
                Ok(Some(Ok(bytes))) => {
                    let mut events = Vec::new();
                    self.open.parser.feed(&bytes, &mut events);
                    self.open.events = events;
                }
                Ok(None) => {
                    let mut out = Vec::new();
                    self.end(200, &mut out);
                    return (!out.is_empty()).then(|| Bytes::from(out));
                }
                Ok(Some(Err(_))) => {
                    let e = GatewayError::upstream_unreachable(
                        &self.d.upstream.name,
                        "the connection broke during the stream",
                    );
                    return Some(self.fail(e));
                }
                Err(_) => {
                    let e = GatewayError::upstream_timeout(&self.d.upstream.name, idle)
                        .with_code("upstream_stream_idle");
                    return Some(self.fail(e));
                }
            }
        }
    }

    /// A chunk with the cost of the usage it reports (cumulative).
    fn metered(&mut self, data: Bytes) -> Bytes {
        if !data.windows(15).any(|w| w == b"\"usageMetadata\"") {
            return data;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&data) else {
            return data;
        };
        let Some(meta) = v.get("usageMetadata").filter(|m| m.is_object()) else {
            return data;
        };
        let usage = gemini::usage_from(meta);
        self.usage = Some(usage);
        self.unmetered = None;
        let c = crate::usage::cost(self.app.catalog(), &self.d, &usage);
        with_cost(data, c)
    }

    fn write(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        self.write_framed(data, out);
        crate::cache::capture(&mut self.captured, &out[start..]);
    }

    fn write_framed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.sse {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n\r\n");
        } else {
            out.extend_from_slice(if self.wrote { b",\r\n" } else { b"[" });
            out.extend_from_slice(data);
        }
        self.wrote = true;
    }

    /// Ends the stream with Google's error object, recorded with its status.
    fn fail(&mut self, e: GatewayError) -> Bytes {
        tracing::warn!(provider = %self.d.upstream.name, error = %e, "stream failed after the first byte");
        let status = e.status.as_u16();
        let body = crate::genai::error_object(status, &serde_json::json!({ "error": e.object() }));
        let mut out = Vec::new();
        self.write(body.to_string().as_bytes(), &mut out);
        self.end(status, &mut out);
        Bytes::from(out)
    }

    fn end(&mut self, status: u16, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        if !self.sse {
            let close: &[u8] = if self.wrote { b"]" } else { b"[]" };
            out.extend_from_slice(close);
            crate::cache::capture(&mut self.captured, close);
        }
        self.record(status);
        // A stream that ended well, into the response cache.
        if let (200, Some(cache), Some(key), Some(body)) = (
            status,
            self.app.cache(),
            self.cache_as,
            self.captured.take(),
        ) {
            let usage = self.usage.unwrap_or_default();
            cache.put(
                key,
                crate::cache::Entry::served(Bytes::from(body), &self.d, usage, Vec::new()),
            );
        }
    }

    /// Writes the record, with the usage the stream reported, or else
    /// the usage of its prompt and text, counted.
    fn record(&mut self, status: u16) {
        let Some(record) = self.record.take() else {
            return;
        };
        let usage = match (self.usage, self.unmetered.take()) {
            (Some(u), _) => u,
            (None, Some(unmetered)) if tokens::loaded() => unmetered.estimate(),
            // Counted where waiting for the encoding blocks no one; the
            // health below hears of the stream without its tokens.
            (None, Some(unmetered)) => {
                tokens::off_the_serving_thread(move || record(unmetered.estimate(), Some(status)));
                self.stream_ended(status, 0);
                return;
            }
            (None, None) => Usage::default(),
        };
        self.stream_ended(status, usage.completion_tokens);
        record(usage, Some(status));
    }

    /// Tells the deployment's health how the stream went, as chat streams
    /// do (a client gone says nothing of it).
    fn stream_ended(&self, status: u16, completion_tokens: u64) {
        let now = Instant::now();
        if status != 499
            && self.d.stats.on_stream_end(
                &self.app.health,
                now,
                now.saturating_duration_since(self.started),
                now.saturating_duration_since(self.open.first_byte_at),
                completion_tokens,
                status == 200,
            )
        {
            self.app.circuit_opened(&self.d);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The client went away mid-stream: the upstream request is
        // cancelled with the body; the record says 499.
        if !self.ended {
            self.record(499);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_joins_the_usage_metadata() {
        let b = with_cost(
            Bytes::from_static(br#"{"candidates":[],"usageMetadata":{"promptTokenCount":5}}"#),
            0.25,
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["usageMetadata"]["promptTokenCount"], 5);
        assert_eq!(v["usageMetadata"]["cost"], 0.25);
        let plain = Bytes::from_static(br#"{"candidates":[]}"#);
        assert_eq!(with_cost(plain.clone(), 0.25), plain);
    }
}
