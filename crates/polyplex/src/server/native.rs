//! Anthropic's Messages API passed through: a `POST /v1/messages` whose
//! every deployment takes that API (Anthropic's own, Claude on Vertex AI
//! and on Bedrock: `Protocol::carries_messages`) goes upstream as the client
//! wrote it ([`polyplex_providers::anthropic::Native`]), and its answer —
//! the Message, or the stream's events — comes back as the upstream sent
//! it, with `usage.cost` added. Nothing is lost in translation (thinking
//! budgets, `cache_control` anywhere, server tools and their result
//! blocks, citations, `stop_sequence`, beta features).
//!
//! The request still goes through the gateway as chat does: keys, limits,
//! budgets, routing, retries and failover (before the first byte), one
//! usage record. Its chat form ([`crate::messages::to_chat`]) is what
//! routing and the usage estimates read. When a deployment of the plan
//! speaks another protocol, the request is served as chat instead, and a
//! request whose chat form lost something is refused then with the 400
//! that names it.

use super::handlers::Call;
use super::respond::{
    finish_usage, json_bytes, raw_usage_with_cost, record_served, sse_of, Frames, Relay,
    StreamContext,
};
use crate::executor::{attempt_loop, native_stream_once, native_unary_once, NativeOpen};
use crate::keys::Admitted;
use crate::routing::{Deployment, Plan};
use crate::tokens;
use crate::usage::cost;
use axum::response::Response;
use bytes::Bytes;
use polyplex_providers::anthropic::Native;
use polyplex_providers::sse::Event;
use polyplex_providers::{Endpoint, RawReply, StreamItem};
use polyplex_types::{GatewayError, RequestBody};
use std::sync::Arc;

/// A Messages request that may go upstream as written.
pub(super) struct NativeRequest {
    pub(super) native: Native,
    /// What its chat form could not carry: the 400 a plan with a
    /// deployment of another protocol answers.
    pub(super) lossy: Option<GatewayError>,
}

/// Marks an answer that is already Anthropic's (not chat's, to be rewritten).
#[derive(Clone, Copy)]
pub(super) struct NativeAnswer;

/// What [`serve`] needs of the validated request.
pub(super) struct Asked<'a> {
    pub(super) model: &'a str,
    pub(super) stream: bool,
    /// Its chat form.
    pub(super) body: RequestBody,
    pub(super) admitted: Option<Admitted>,
    /// Where the response cache keeps the answer (see
    /// [`super::handlers`]: Anthropic's answers apart from chat's).
    pub(super) cache_as: Option<crate::cache::Key>,
}

/// Serves `asked` through `plan`, whose deployments all take Anthropic's
/// Messages API.
pub(super) async fn serve(
    call: &Call,
    asked: Asked<'_>,
    plan: &Plan,
    native: &Arc<NativeRequest>,
    gone: &super::handlers::Unanswered<'_>,
) -> Response {
    let app = &call.app;
    let body = &asked.body;
    let native = &native.native;
    if asked.stream {
        let outcome = attempt_loop(app, plan, false, |d, g| async move {
            gone.attempt(&d, native_stream_once(app, &d, g, native, body))
                .await
        })
        .await;
        let served = outcome.trace;
        return match outcome.result {
            Ok((open, d)) => {
                let ctx = StreamContext {
                    app: app.clone(),
                    request_id: call.rid.clone(),
                    endpoint: Endpoint::Chat,
                    label: call.label,
                    requested_model: asked.model.to_string(),
                    include_usage: false,
                    functions: false,
                    custom: None,
                    started: call.started,
                    attempts: served.attempts,
                    request: asked.body,
                    admitted: asked.admitted,
                    cache_as: asked.cache_as,
                    tags: call.tags(),
                };
                let mut resp = stream_response(ctx, open, d);
                served.apply(&mut resp);
                if asked.cache_as.is_some() {
                    super::respond::cache_missed(&mut resp);
                }
                resp
            }
            Err(e) => call.fail(asked.model, true, e, &served),
        };
    }
    let outcome = attempt_loop(app, plan, true, |d, g| async move {
        gone.attempt(&d, native_unary_once(app, &d, g, native, body))
            .await
    })
    .await;
    let served = outcome.trace;
    match outcome.result {
        Ok((answer, d)) => {
            if !tokens::loaded()
                && tokens::answer_counts(Endpoint::Chat, answer.usage.as_ref(), &answer.reply)
            {
                gone.attempt(&d, tokens::ready()).await;
            }
            let (_, usage, c) =
                finish_usage(app, &d, Endpoint::Chat, body, answer.reply, answer.usage);
            let record = call.served_record(
                asked.model,
                &d,
                usage,
                c,
                served.attempts,
                asked.admitted.as_ref(),
            );
            d.stats.on_tokens(usage.completion_tokens, record.latency);
            record_served(app, &d, record);
            let bytes = with_cost(answer.bytes, c);
            if let (Some(cache), Some(key)) = (app.cache(), asked.cache_as) {
                cache.put(
                    key,
                    crate::cache::Entry::served(bytes.clone(), &d, usage, Vec::new()),
                );
            }
            let mut resp = json_bytes(bytes);
            served.apply(&mut resp);
            if asked.cache_as.is_some() {
                super::respond::cache_missed(&mut resp);
            }
            resp.extensions_mut().insert(NativeAnswer);
            resp
        }
        Err(e) => call.fail(asked.model, false, e, &served),
    }
}

/// An Anthropic answer or event with `usage.cost` added (as it is, when
/// its `usage` is not an object).
fn with_cost(body: Bytes, c: f64) -> Bytes {
    let Ok(mut raw) = RawReply::parse(body.clone()) else {
        return body;
    };
    let has_usage = raw.get("usage").is_some_and(|u| u.starts_with('{'));
    if has_usage && raw_usage_with_cost(&mut raw, c) {
        raw.to_bytes()
    } else {
        body
    }
}

/// An event as SSE text, as Anthropic frames it.
fn frame(name: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 32);
    if let Some(n) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(n.as_bytes());
        out.push(b'\n');
    }
    for line in data.split(|b| *b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    Bytes::from(out)
}

/// The name of an event (its `event:` field, else its data's `type`).
fn name_of(ev: &Event) -> Option<&str> {
    ev.event.as_deref().or_else(|| {
        let at = ev.data.find("\"type\"")?;
        let rest = ev.data[at + 6..]
            .trim_start()
            .strip_prefix(':')?
            .trim_start();
        let rest = rest.strip_prefix('"')?;
        rest.split('"').next()
    })
}

/// One passed-through stream: the upstream's events out as they came,
/// read on the way for their usage (by the protocol's own decoder, whose
/// chat chunks are not sent), which [`Relay`] records.
struct NativeRelay {
    r: Relay,
    /// Events read and not yet relayed.
    events: Vec<Event>,
    /// The `message_delta` event, held until `message_stop` says the usage
    /// is complete and its cost can be added.
    held: Option<String>,
    /// The error the upstream's framing raised (a Bedrock exception),
    /// once the events before it are relayed.
    raised: Option<GatewayError>,
}

fn stream_response(ctx: StreamContext, open: NativeOpen, d: Deployment) -> Response {
    let relay = NativeRelay {
        r: Relay::new(ctx, open.stream, d),
        events: open.events,
        held: None,
        raised: None,
    };
    let mut resp = sse_of(relay);
    resp.extensions_mut().insert(NativeAnswer);
    resp
}

impl Frames for NativeRelay {
    fn next_frame(&mut self) -> impl std::future::Future<Output = Option<Bytes>> + Send {
        NativeRelay::next_frame(self)
    }
}

impl NativeRelay {
    async fn next_frame(&mut self) -> Option<Bytes> {
        use futures::StreamExt;
        loop {
            if let Some(f) = self.r.out.pop_front() {
                return Some(f);
            }
            if self.r.finished {
                return None;
            }
            if !self.events.is_empty() {
                let events = std::mem::take(&mut self.events);
                for ev in &events {
                    if self.r.finished {
                        break;
                    }
                    self.relay(ev).await;
                }
                continue;
            }
            if let Some(e) = self.raised.take() {
                self.fail(e).await;
                continue;
            }
            let name = &self.r.deployment.upstream.name;
            let idle = self.r.open.idle_timeout;
            match tokio::time::timeout(idle, self.r.open.body.next()).await {
                Err(_) => {
                    let e = GatewayError::upstream_timeout(name, idle)
                        .with_code("upstream_stream_idle");
                    self.fail(e).await
                }
                Ok(Some(Ok(bytes))) => {
                    let mut framed = Vec::new();
                    self.r.open.parser.feed(&bytes, &mut framed);
                    let d = &self.r.deployment;
                    let protocol = d.upstream.protocol_for(Endpoint::Chat, &d.model);
                    for ev in framed {
                        match protocol.messages_event(&d.upstream.name, ev) {
                            Ok(ev) => self.events.push(ev),
                            Err(e) => {
                                // What came before the error goes out first.
                                self.raised = Some(e);
                                break;
                            }
                        }
                    }
                }
                Ok(Some(Err(_))) => {
                    let e = GatewayError::upstream_unreachable(
                        name,
                        "the connection broke during the stream",
                    );
                    self.fail(e).await
                }
                // The stream ended: after `message_stop` (the relay has
                // finished) or before it.
                Ok(None) => {
                    let mut rest = Vec::new();
                    match self.r.open.decoder.finish(&mut rest) {
                        Err(e) => self.fail(e).await,
                        // (`message_stop` came: the relay has ended.)
                        Ok(()) => self.end(200).await,
                    }
                }
            }
        }
    }

    /// Relays one upstream event and reads it.
    async fn relay(&mut self, ev: &Event) {
        let mut items = Vec::new();
        let name = name_of(ev);
        if let Err(e) = self.r.open.decoder.on_event(ev, &mut items) {
            if name == Some("error") {
                // The upstream's own error event, as it sent it.
                self.flush_held();
                self.r.push(frame(name, ev.data.as_bytes()));
                self.end(e.status.as_u16()).await;
            } else {
                self.fail(e).await;
            }
            return;
        }
        self.r.counting(&items).await;
        let mut done = false;
        for item in items {
            match item {
                StreamItem::Usage(mut u, _) => {
                    tokens::stream_reasoning(&mut u, self.r.open.decoder.as_ref());
                    self.r.usage = Some(u);
                    if let Some(held) = self.held.take() {
                        let c = cost(self.r.ctx.app.catalog(), &self.r.deployment, &u);
                        let data = with_cost(Bytes::from(held), c);
                        self.r.push(frame(Some("message_delta"), &data));
                    }
                }
                StreamItem::Done => done = true,
                StreamItem::Chunk(_) => {}
            }
        }
        // Events go out in the order they came: a delta still held goes
        // before any later event (without its cost, if the usage is not
        // whole by then). Each goes out named, as Anthropic's SDKs read
        // them, even from an upstream that names them only in the data.
        self.flush_held();
        if name == Some("message_delta") && !done {
            self.held = Some(ev.data.clone());
        } else {
            self.r.push(frame(name, ev.data.as_bytes()));
        }
        if done {
            self.end(200).await;
        }
    }

    /// A held `message_delta` out as it came (the stream ends without the
    /// usage it waited for).
    fn flush_held(&mut self) {
        if let Some(held) = self.held.take() {
            self.r.push(frame(Some("message_delta"), held.as_bytes()));
        }
    }

    /// The stream's end, recorded with `status` (once).
    async fn end(&mut self, status: u16) {
        self.r.counting(&[StreamItem::Done]).await;
        self.r.finished = true;
        self.r.record(status);
        if status == 200 {
            self.r.store();
        }
    }

    /// Ends the stream with an `error` event of Anthropic's shape.
    async fn fail(&mut self, e: GatewayError) {
        tracing::warn!(request_id = %self.r.ctx.request_id, provider = %self.r.deployment.upstream.name, error = %e, "stream failed after the first byte");
        self.flush_held();
        let body = crate::messages::error_object(
            e.status.as_u16(),
            &serde_json::json!({ "error": e.object() }),
        );
        self.r
            .push(frame(Some("error"), body.to_string().as_bytes()));
        self.end(e.status.as_u16()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_framed_as_anthropic_does() {
        assert_eq!(
            &frame(Some("ping"), br#"{"type":"ping"}"#)[..],
            b"event: ping\ndata: {\"type\":\"ping\"}\n\n"
        );
        assert_eq!(&frame(None, b"a\nb")[..], b"data: a\ndata: b\n\n");
        let ev = |event: Option<&str>, data: &str| Event {
            event: event.map(str::to_string),
            data: data.to_string(),
        };
        assert_eq!(name_of(&ev(Some("error"), "{}")), Some("error"));
        assert_eq!(
            name_of(&ev(None, r#"{"type" : "message_delta","delta":{}}"#)),
            Some("message_delta")
        );
        assert_eq!(name_of(&ev(None, "{}")), None);
    }

    #[test]
    fn the_cost_joins_the_usage() {
        let b = with_cost(
            Bytes::from_static(br#"{"type":"message_delta","usage":{"output_tokens":5}}"#),
            0.25,
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["usage"]["output_tokens"], 5);
        assert_eq!(v["usage"]["cost"], 0.25);
        // Without a usage object: as it was.
        let plain = Bytes::from_static(br#"{"type":"message_stop"}"#);
        assert_eq!(with_cost(plain.clone(), 0.25), plain);
    }
}
