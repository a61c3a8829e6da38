//! OpenAI's legacy completions (`POST /v1/completions`) through a chat API:
//! a protocol that has only one (Anthropic, Gemini, Bedrock, Cohere, Vertex
//! AI), or an OpenAI-protocol API without the completions endpoint for the
//! model (OpenAI's chat models, Groq, Mistral, ...).
//!
//! [`ViaChat`] wraps the protocol: the prompt becomes one user message,
//! the shared sampling parameters go along under their own names, and the
//! chat answer (or each stream chunk) comes back as a `text_completion`.
//! What chat cannot ask is refused by name (or dropped and named under
//! `drop_params`): a streamed list of prompts, token-id prompts, `suffix`,
//! `best_of` above `n`, and `logprobs` with `echo` (the prompt's log
//! probabilities); a unary list of prompts is asked a prompt at a time by
//! the gateway ([`split_prompts`], [`crate::join_choices`]). `logprobs: n` is
//! chat's `logprobs` and `top_logprobs`, and comes back in the completion's
//! shape.
//! `echo` is honoured (the prompt leads the text), and `max_tokens`
//! defaults to 16, as on OpenAI's endpoint.
//!
//! As every adapter, it is pure translation; the gateway picks it per
//! deployment and model (`Upstream::protocol_for`, from
//! [`Protocol::answers_completions`], the API's host and the provider's
//! `completions` setting), so routing, failover, limits and usage treat
//! the request as any other.

use crate::{
    sse, unsupported, Endpoint, Protocol, Reply, StreamDecoder, StreamItem, StreamSummary, Target,
    UpstreamRequest,
};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use polyplex_types::{GatewayError, JsonMap, RequestBody, Usage};
use serde_json::{json, Value};
use std::sync::Arc;

/// OpenAI's default `max_tokens` for completions.
pub const DEFAULT_MAX_TOKENS: u64 = 16;

/// Members of a completions request that chat has no equal for; handled here.
const TEXT_ONLY: [&str; 5] = ["prompt", "echo", "suffix", "best_of", "logprobs"];

/// A protocol answering completions through its chat API.
pub struct ViaChat(pub Arc<dyn Protocol>);

impl ViaChat {
    fn refuse_what_chat_cannot_ask(
        &self,
        body: &JsonMap,
        target: &Target<'_>,
        dropped: &mut Vec<String>,
    ) -> Result<(), GatewayError> {
        let name = self.0.name();
        let refuse = |why: &str| {
            GatewayError::invalid_param(
                "prompt",
                format!(
                    "Provider `{}` ({name} protocol) answers completions through its chat API, which takes one text prompt: {why}.",
                    target.provider
                ),
            )
            .with_code("unsupported_parameter")
        };
        match body.get("prompt") {
            Some(Value::String(s)) if s.is_empty() => return Err(refuse("the prompt is empty")),
            Some(Value::String(_)) => {}
            Some(Value::Array(a)) if a.len() == 1 => match &a[0] {
                Value::String(s) if s.is_empty() => return Err(refuse("the prompt is empty")),
                Value::String(_) => {}
                _ => return Err(refuse("token ids cannot be sent; send the text")),
            },
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
                // The gateway asks a list a prompt at a time
                // ([`crate::split_request`]); a stream, up to a limit.
                let n = match body.get("n").and_then(polyplex_types::integer) {
                    Some(n) if n > 1 => format!(" with n={n}"),
                    _ => String::new(),
                };
                return Err(refuse(&format!(
                    "{} prompts{n} need more than the {} upstream streams polyplex opens for one request; send fewer prompts per request, or leave out stream",
                    a.len(),
                    crate::MOST_CHOICES_APART
                )));
            }
            _ => return Err(refuse("token ids cannot be sent; send the text")),
        }
        if body
            .get("suffix")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            unsupported("suffix", name, target, dropped)?;
        }
        // Log probabilities go to the chat API (which may refuse them by
        // name itself); the prompt's, which `echo` adds, it does not give.
        if body.get("logprobs").is_some_and(|v| !v.is_null())
            && body.get("echo") == Some(&Value::Bool(true))
        {
            if !target.drop_params {
                return Err(GatewayError::invalid_param(
                    "logprobs",
                    format!(
                        "logprobs with echo asks for the prompt's log probabilities, which provider `{}` ({name} protocol) does not give through its chat API. Leave out echo or logprobs, or set drop_params to drop logprobs.",
                        target.provider
                    ),
                )
                .with_code("unsupported_parameter"));
            }
            dropped.push("logprobs".into());
        }
        let n = body.get("n").and_then(Value::as_f64).unwrap_or(1.0);
        if body
            .get("best_of")
            .and_then(Value::as_f64)
            .is_some_and(|b| b > n)
        {
            unsupported("best_of", name, target, dropped)?;
        }
        if body.get("max_tokens").and_then(Value::as_f64) == Some(0.0) {
            return Err(GatewayError::invalid_param(
                "max_tokens",
                format!(
                    "max_tokens must be at least 1 for provider `{}` ({name} protocol), whose chat API cannot answer with the prompt alone.",
                    target.provider
                ),
            ));
        }
        Ok(())
    }
}

/// A completions body with several text prompts, as one body per prompt
/// (every other member kept); `None` for one prompt, or a list that is not
/// all text (refused when built).
pub fn split_prompts(body: &JsonMap) -> Option<Vec<JsonMap>> {
    let Some(Value::Array(prompts)) = body.get("prompt") else {
        return None;
    };
    if prompts.len() < 2 || !prompts.iter().all(Value::is_string) {
        return None;
    }
    Some(
        prompts
            .iter()
            .map(|p| {
                let mut part = body.clone();
                part.insert("prompt".into(), p.clone());
                part
            })
            .collect(),
    )
}

/// The prompt's text: a string, or the one string of a list.
fn prompt(body: &JsonMap) -> &str {
    match body.get("prompt") {
        Some(Value::String(s)) => s,
        Some(Value::Array(a)) => a.first().and_then(Value::as_str).unwrap_or(""),
        _ => "",
    }
}

/// The text `echo` puts before each choice's, if asked.
fn echoed(body: &JsonMap) -> Option<String> {
    (body.get("echo") == Some(&Value::Bool(true))).then(|| prompt(body).to_string())
}

/// The chat request that asks what a completions request asks: the prompt
/// as one user message, every other member (but the completions-only ones)
/// as it came, and `max_tokens` 16 unless given.
pub fn chat_request(body: &JsonMap) -> JsonMap {
    let mut chat = JsonMap::with_capacity(body.len() + 1);
    for (k, v) in body {
        if k == "prompt" {
            chat.insert(
                "messages".into(),
                json!([{"role": "user", "content": prompt(body)}]),
            );
        } else if !TEXT_ONLY.contains(&k.as_str()) {
            chat.insert(k.clone(), v.clone());
        }
    }
    if body.get("max_tokens").is_none_or(Value::is_null) {
        chat.insert("max_tokens".into(), json!(DEFAULT_MAX_TOKENS));
    }
    // `logprobs: n`: the chosen tokens' and the n likeliest alternatives'.
    if let Some(n) = body.get("logprobs").filter(|v| !v.is_null()) {
        chat.insert("logprobs".into(), json!(true));
        if n.as_f64().is_some_and(|n| n > 0.0) {
            chat.insert("top_logprobs".into(), n.clone());
        }
    }
    chat
}

/// A chat choice's log probabilities (`logprobs.content`) as a text
/// completion's: the tokens, their log probabilities, the alternatives as
/// token → log probability, and each token's character offset in the
/// text, counted on from `offset`. Null when there are none.
fn text_logprobs(chat: Option<&Value>, offset: &mut usize) -> Value {
    let Some(content) = chat
        .and_then(|l| l.get("content"))
        .and_then(Value::as_array)
    else {
        return Value::Null;
    };
    let mut tokens = Vec::with_capacity(content.len());
    let mut token_logprobs = Vec::with_capacity(content.len());
    let mut top = Vec::with_capacity(content.len());
    let mut offsets = Vec::with_capacity(content.len());
    for t in content {
        let token = t.get("token").and_then(Value::as_str).unwrap_or("");
        tokens.push(json!(token));
        token_logprobs.push(t.get("logprob").cloned().unwrap_or(Value::Null));
        let alternatives: JsonMap = t
            .get("top_logprobs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| {
                let token = a.get("token")?.as_str()?;
                Some((token.to_string(), a.get("logprob")?.clone()))
            })
            .collect();
        top.push(Value::Object(alternatives));
        offsets.push(json!(*offset));
        *offset += token.chars().count();
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets})
}

/// An error about the chat request, named as the completions request has it.
fn renamed(mut e: GatewayError) -> GatewayError {
    if let Some(p) = &e.param {
        if p == "messages" || p.starts_with("messages[") || p.starts_with("messages.") {
            e.param = Some("prompt".into());
        } else if p == "max_completion_tokens" {
            e.param = Some("max_tokens".into());
        } else if p == "top_logprobs" {
            e.param = Some("logprobs".into());
        }
    }
    e
}

/// One choice of a text completion (or of its stream chunk).
fn text_choice(text: String, index: Value, logprobs: Value, finish: Option<&Value>) -> Value {
    json!({"text": text, "index": index, "logprobs": logprobs,
        "finish_reason": finish.cloned().unwrap_or(Value::Null)})
}

/// A chat completion as a text completion; the prompt leads each choice's
/// text when `echo` asked for it.
pub fn text_answer(mut chat: JsonMap, echo: Option<&str>) -> JsonMap {
    let mut out = JsonMap::with_capacity(7);
    for k in ["id", "object", "created", "model", "system_fingerprint"] {
        if let Some(v) = chat.remove(k) {
            out.insert(k.into(), v);
        }
    }
    out.insert("object".into(), json!("text_completion"));
    let choices: Vec<Value> = match chat.remove("choices") {
        Some(Value::Array(choices)) => choices
            .into_iter()
            .map(|c| {
                let content = c
                    .pointer("/message/content")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let text = match echo {
                    Some(p) => format!("{p}{content}"),
                    None => content.to_string(),
                };
                let mut offset = echo.map_or(0, |p| p.chars().count());
                text_choice(
                    text,
                    c.get("index").cloned().unwrap_or(json!(0)),
                    text_logprobs(c.get("logprobs"), &mut offset),
                    c.get("finish_reason"),
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    out.insert("choices".into(), Value::Array(choices));
    if let Some(u) = chat.remove("usage") {
        out.insert("usage".into(), u);
    }
    out
}

impl Protocol for ViaChat {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn build(
        &self,
        endpoint: Endpoint,
        body: &JsonMap,
        stream: bool,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        if endpoint != Endpoint::Completions {
            return self.0.build(endpoint, body, stream, target);
        }
        let mut dropped = Vec::new();
        self.refuse_what_chat_cannot_ask(body, target, &mut dropped)?;
        let mut chat = chat_request(body);
        if dropped.iter().any(|d| d == "logprobs") {
            chat.remove("logprobs");
            chat.remove("top_logprobs");
        }
        // OpenAI's reasoning models take only the newer name.
        if crate::openai_compat::request::is_openais_own(target) {
            if let Some(v) = chat.remove("max_tokens") {
                chat.insert("max_completion_tokens".into(), v);
            }
        }
        let mut req = self
            .0
            .build(Endpoint::Chat, &chat, stream, target)
            .map_err(renamed)?;
        for d in req.dropped.drain(..) {
            let d = if d == "top_logprobs" {
                "logprobs".into()
            } else {
                d
            };
            if !dropped.contains(&d) {
                dropped.push(d);
            }
        }
        req.dropped = dropped;
        Ok(req)
    }

    fn parse(
        &self,
        endpoint: Endpoint,
        provider: &str,
        request: &JsonMap,
        body: &[u8],
    ) -> Result<(JsonMap, Option<Usage>), GatewayError> {
        if endpoint != Endpoint::Completions {
            return self.0.parse(endpoint, provider, request, body);
        }
        let (chat, usage) = self
            .0
            .parse(Endpoint::Chat, provider, &chat_request(request), body)?;
        Ok((text_answer(chat, echoed(request).as_deref()), usage))
    }

    fn error(&self, provider: &str, status: StatusCode, body: &[u8]) -> GatewayError {
        self.0.error(provider, status, body)
    }

    fn error_with_headers(
        &self,
        provider: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> GatewayError {
        self.0.error_with_headers(provider, status, headers, body)
    }

    fn embedding_inputs_per_request(&self, model: &str) -> Option<usize> {
        self.0.embedding_inputs_per_request(model)
    }

    fn one_prompt_per_request(&self) -> bool {
        true
    }

    fn answers_n(&self, model: &str) -> bool {
        self.0.answers_n(model)
    }

    fn web_search_price(&self, model: &str) -> f64 {
        self.0.web_search_price(model)
    }

    fn rerank_request(
        &self,
        call: &crate::rerank::RerankCall<'_>,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        self.0.rerank_request(call, target)
    }

    fn rerank_answer(
        &self,
        provider: &str,
        model: &str,
        body: &[u8],
        documents: usize,
    ) -> Result<crate::rerank::Ranked, GatewayError> {
        self.0.rerank_answer(provider, model, body, documents)
    }

    fn search_unit_price(&self, model: &str) -> f64 {
        self.0.search_unit_price(model)
    }

    fn stream_parser(&self) -> sse::Parser {
        self.0.stream_parser()
    }

    fn stream_decoder(
        &self,
        endpoint: Endpoint,
        provider: &str,
        model: &str,
        request: &RequestBody,
    ) -> Box<dyn StreamDecoder> {
        if endpoint != Endpoint::Completions {
            return self.0.stream_decoder(endpoint, provider, model, request);
        }
        let chat = RequestBody::from_map(chat_request(request.map()));
        Box::new(TextStream {
            inner: self
                .0
                .stream_decoder(Endpoint::Chat, provider, model, &chat),
            echo: echoed(request.map()),
            started: Vec::new(),
            scratch: Vec::new(),
        })
    }
}

/// A chat stream's chunks as text completion chunks.
struct TextStream {
    inner: Box<dyn StreamDecoder>,
    echo: Option<String>,
    /// The choices whose text has begun (and so carried the echo): index,
    /// and the characters of text sent so far (the next token's offset).
    started: Vec<(u64, usize)>,
    scratch: Vec<StreamItem>,
}

impl TextStream {
    /// One step of the chat decoder (an event, or the end), its items
    /// converted into `out`.
    fn relay(
        &mut self,
        out: &mut Vec<StreamItem>,
        step: impl FnOnce(&mut dyn StreamDecoder, &mut Vec<StreamItem>) -> Result<(), GatewayError>,
    ) -> Result<(), GatewayError> {
        let mut items = std::mem::take(&mut self.scratch);
        let stepped = step(self.inner.as_mut(), &mut items);
        let converted = self.convert(&items, out);
        items.clear();
        self.scratch = items;
        stepped.and(converted)
    }

    fn convert(
        &mut self,
        items: &[StreamItem],
        out: &mut Vec<StreamItem>,
    ) -> Result<(), GatewayError> {
        for item in items {
            match item {
                StreamItem::Chunk(bytes) => {
                    let chunk: JsonMap = serde_json::from_slice(bytes).map_err(|e| {
                        GatewayError::internal(format!("a translated chunk is not JSON: {e}"))
                    })?;
                    if let Some(text) = self.text_chunk(chunk) {
                        let bytes = serde_json::to_vec(&text).map_err(|e| {
                            GatewayError::internal(format!("could not encode a chunk: {e}"))
                        })?;
                        out.push(StreamItem::Chunk(Bytes::from(bytes)));
                    }
                }
                StreamItem::Usage(usage, reply) => {
                    let mut chunk = reply.clone().into_map();
                    chunk.entry("usage").or_insert_with(|| usage.to_json());
                    if let Some(text) = self.text_chunk(chunk) {
                        out.push(StreamItem::Usage(*usage, Reply::Map(text)));
                    }
                }
                StreamItem::Done => out.push(StreamItem::Done),
            }
        }
        Ok(())
    }

    /// A chat chunk as a text completion chunk: each choice's content (the
    /// echo before a choice's first), its finish reason; `None` for a chunk
    /// that carries neither (a role, reasoning) nor usage.
    fn text_chunk(&mut self, mut chunk: JsonMap) -> Option<JsonMap> {
        let mut choices = Vec::new();
        if let Some(Value::Array(cs)) = chunk.remove("choices") {
            for c in cs {
                let content = c.pointer("/delta/content").and_then(Value::as_str);
                let finish = c.get("finish_reason").filter(|v| !v.is_null());
                if content.is_none() && finish.is_none() {
                    continue;
                }
                let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
                let mut text = String::new();
                let at = match self.started.iter().position(|(i, _)| *i == index) {
                    Some(at) => at,
                    None => {
                        if let Some(p) = &self.echo {
                            text.push_str(p);
                        }
                        self.started.push((index, 0));
                        self.started.len() - 1
                    }
                };
                let content = content.unwrap_or("");
                text.push_str(content);
                // The tokens' offsets start where this chunk's content does.
                let sent = &mut self.started[at].1;
                let mut offset = *sent + text.chars().count() - content.chars().count();
                *sent += text.chars().count();
                let logprobs = text_logprobs(c.get("logprobs"), &mut offset);
                choices.push(text_choice(text, json!(index), logprobs, finish));
            }
        }
        if choices.is_empty() && chunk.get("usage").is_none_or(Value::is_null) {
            return None;
        }
        chunk.insert("object".into(), json!("text_completion"));
        chunk.insert("choices".into(), Value::Array(choices));
        Some(chunk)
    }
}

impl StreamDecoder for TextStream {
    fn on_event(
        &mut self,
        event: &sse::Event,
        out: &mut Vec<StreamItem>,
    ) -> Result<(), GatewayError> {
        self.relay(out, |inner, items| inner.on_event(event, items))
    }

    fn finish(&mut self, out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        self.relay(out, |inner, items| inner.finish(items))
    }

    fn saw_usage(&self) -> bool {
        self.inner.saw_usage()
    }

    fn summary(&self) -> StreamSummary {
        self.inner.summary()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anthropic::Anthropic;
    use crate::AuthStyle;

    fn via() -> ViaChat {
        ViaChat(Arc::new(Anthropic))
    }

    fn map(v: Value) -> JsonMap {
        v.as_object().cloned().unwrap_or_default()
    }

    fn build(v: Value, drop_params: bool) -> Result<(Value, Vec<String>), GatewayError> {
        let auth = AuthStyle::bearer();
        let target = crate::tests::test_target(
            &auth,
            "https://api.anthropic.com",
            "claude-sonnet-4-5",
            drop_params,
        );
        let req = via().build(Endpoint::Completions, &map(v), false, &target)?;
        Ok((serde_json::from_slice(&req.body).unwrap(), req.dropped))
    }

    #[test]
    fn the_prompt_is_one_user_turn_and_max_tokens_defaults_to_16() {
        let (sent, dropped) = build(
            json!({"model": "m", "prompt": "Say this is a test", "temperature": 0.5, "stop": ["\n"], "echo": true}),
            false,
        )
        .unwrap();
        assert!(dropped.is_empty());
        assert_eq!(sent["messages"].as_array().map(Vec::len), Some(1));
        assert_eq!(sent["messages"][0]["role"], "user");
        assert!(sent["messages"].to_string().contains("Say this is a test"));
        assert_eq!(sent["max_tokens"], 16);
        assert_eq!(sent["temperature"], 0.5);
        assert_eq!(sent["stop_sequences"], json!(["\n"]));
        for k in ["prompt", "echo", "suffix", "best_of", "logprobs"] {
            assert!(sent.get(k).is_none(), "{k} reached the upstream");
        }
        let (sent, _) = build(
            json!({"model": "m", "prompt": ["one prompt"], "max_tokens": 100}),
            false,
        )
        .unwrap();
        assert_eq!(sent["max_tokens"], 100);
        assert!(sent["messages"].to_string().contains("one prompt"));
    }

    #[test]
    fn what_chat_cannot_ask_is_refused_by_name() {
        let refused = [
            (json!({"prompt": ["a", "b"]}), "prompt"),
            (json!({"prompt": [1, 2, 3]}), "prompt"),
            (json!({"prompt": [[1, 2], [3]]}), "prompt"),
            (json!({"prompt": ""}), "prompt"),
            (json!({"prompt": "hi", "suffix": "end"}), "suffix"),
            (json!({"prompt": "hi", "logprobs": 2}), "logprobs"),
            (json!({"prompt": "hi", "logprobs": 0}), "logprobs"),
            (
                json!({"prompt": "hi", "logprobs": 1, "echo": true}),
                "logprobs",
            ),
            (json!({"prompt": "hi", "best_of": 3}), "best_of"),
            (json!({"prompt": "hi", "max_tokens": 0}), "max_tokens"),
            // The chat translator's own refusals keep their names.
            (json!({"prompt": "hi", "seed": 1}), "seed"),
            (json!({"prompt": "hi", "n": 2, "best_of": 2}), "n"),
        ];
        for (mut body, param) in refused {
            body["model"] = json!("m");
            let e = build(body.clone(), false).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.param.as_deref()),
                (400, Some(param)),
                "{body}: {}",
                e.message
            );
        }
        for (body, param) in [
            (json!({"prompt": "hi", "suffix": "end"}), "suffix"),
            (json!({"prompt": "hi", "logprobs": 0}), "logprobs"),
            (json!({"prompt": "hi", "best_of": 2}), "best_of"),
        ] {
            let mut body = body;
            body["model"] = json!("m");
            let (_, dropped) = build(body.clone(), true).unwrap();
            assert_eq!(dropped, vec![param.to_string()], "{body}");
        }
        // Values that ask for nothing more are honoured.
        let (_, dropped) = build(
            json!({"model": "m", "prompt": "hi", "suffix": "", "best_of": 1, "logprobs": null, "echo": false}),
            false,
        )
        .unwrap();
        assert!(dropped.is_empty());
    }

    /// On an OpenAI-protocol API, the chat request goes to its chat path;
    /// OpenAI's own gets `max_completion_tokens` (its reasoning models take
    /// no other), any other the name the client used.
    #[test]
    fn an_openai_protocol_api_gets_its_chat_request() {
        let via = ViaChat(Arc::new(crate::openai_compat::OpenAiCompat));
        let auth = AuthStyle::bearer();
        let body = map(json!({"model": "m", "prompt": "hi", "temperature": 0}));
        for (base, name) in [
            ("https://api.openai.com/v1", "max_completion_tokens"),
            (
                "https://res.openai.azure.com/openai/v1",
                "max_completion_tokens",
            ),
            ("http://127.0.0.1:8000/v1", "max_tokens"),
        ] {
            let target = crate::tests::test_target(&auth, base, "gpt-5", false);
            let req = via
                .build(Endpoint::Completions, &body, false, &target)
                .unwrap();
            assert!(req.url.ends_with("/chat/completions"), "{}", req.url);
            let sent: Value = serde_json::from_slice(&req.body).unwrap();
            assert_eq!(sent[name], 16, "{base}: {sent}");
            assert_eq!(sent.as_object().unwrap().len(), 4, "{base}: {sent}");
            assert_eq!(sent["messages"], json!([{"role": "user", "content": "hi"}]));
        }
    }

    /// `logprobs: n` asks chat for the tokens' log probabilities and n
    /// alternatives; they come back in the completion's shape, unary and
    /// streamed, each token's offset counted in characters of the text.
    #[test]
    fn log_probabilities_come_back_in_the_completions_shape() {
        let via = ViaChat(Arc::new(crate::openai_compat::OpenAiCompat));
        let auth = AuthStyle::bearer();
        let target = crate::tests::test_target(&auth, "http://127.0.0.1:8000/v1", "m", false);
        let body = map(json!({"model": "m", "prompt": "hi", "logprobs": 2}));
        let req = via
            .build(Endpoint::Completions, &body, false, &target)
            .unwrap();
        let sent: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(
            (sent["logprobs"].clone(), sent["top_logprobs"].clone()),
            (json!(true), json!(2))
        );
        let token = |t: &str, lp: f64| {
            json!({"token": t, "logprob": lp, "bytes": t.as_bytes(),
                "top_logprobs": [{"token": t, "logprob": lp}, {"token": "x", "logprob": -9.0}]})
        };
        let answer = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hé yo"}, "finish_reason": "stop",
                "logprobs": {"content": [token("Hé", -0.5), token(" yo", -1.5)]}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}});
        let (text, _) = via
            .parse(
                Endpoint::Completions,
                "p",
                &body,
                answer.to_string().as_bytes(),
            )
            .unwrap();
        let lp = &text["choices"][0]["logprobs"];
        assert_eq!(lp["tokens"], json!(["Hé", " yo"]));
        assert_eq!(lp["token_logprobs"], json!([-0.5, -1.5]));
        assert_eq!(lp["top_logprobs"][1], json!({" yo": -1.5, "x": -9.0}));
        assert_eq!(lp["text_offset"], json!([0, 2]));

        let request = RequestBody::from_map(map(
            json!({"model": "m", "prompt": "hi", "logprobs": 1, "stream": true}),
        ));
        let mut d = via.stream_decoder(Endpoint::Completions, "p", "m", &request);
        let chunk = |delta: Value, lp: Value| {
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": null}]})
        };
        let mut items = Vec::new();
        for c in [
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(
                json!({"content": "Hé"}),
                json!({"content": [token("Hé", -0.5)]}),
            ),
            chunk(
                json!({"content": " yo"}),
                json!({"content": [token(" yo", -1.5)]}),
            ),
        ] {
            let ev = sse::Event {
                event: None,
                data: c.to_string(),
            };
            d.on_event(&ev, &mut items).unwrap();
        }
        let offsets: Vec<Value> = items
            .iter()
            .filter_map(|it| match it {
                StreamItem::Chunk(b) => serde_json::from_slice::<Value>(b).ok(),
                _ => None,
            })
            .filter(|c| c["choices"][0]["text"] != "")
            .map(|c| c["choices"][0]["logprobs"]["text_offset"][0].clone())
            .collect();
        assert_eq!(offsets, vec![json!(0), json!(2)]);
    }

    #[test]
    fn several_prompts_are_asked_one_at_a_time_and_joined_in_order() {
        let body = map(json!({"model": "m", "prompt": ["a", "b"], "n": 2, "echo": true}));
        let parts = split_prompts(&body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0]["prompt"].clone(), parts[1]["prompt"].clone()),
            (json!("a"), json!("b"))
        );
        assert_eq!(
            (parts[1]["n"].clone(), parts[1]["echo"].clone()),
            (json!(2), json!(true))
        );
        for one in [
            json!({"prompt": "a"}),
            json!({"prompt": ["a"]}),
            json!({"prompt": [[1], [2]]}),
        ] {
            assert!(split_prompts(&map(one.clone())).is_none(), "{one}");
        }
        let part = |id: &str, texts: [&str; 2], u: Option<(u64, u64)>| {
            let answer = json!({"id": id, "object": "text_completion", "model": "m", "choices": [
                {"text": texts[1], "index": 1, "logprobs": null, "finish_reason": "stop"},
                {"text": texts[0], "index": 0, "logprobs": null, "finish_reason": "stop"}]});
            let usage = u.map(|(p, c)| Usage {
                prompt_tokens: p,
                completion_tokens: c,
                ..Usage::default()
            });
            (Reply::Map(map(answer)), usage)
        };
        let (joined, usage) = crate::join_choices(vec![
            part("cmpl-1", ["a0", "a1"], Some((1, 2))),
            part("cmpl-2", ["b0", "b1"], Some((3, 4))),
        ]);
        let joined = joined.into_map();
        assert_eq!(joined["id"], "cmpl-1");
        let texts: Vec<(u64, &str)> = joined["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["index"].as_u64().unwrap(), c["text"].as_str().unwrap()))
            .collect();
        assert_eq!(texts, vec![(0, "a0"), (1, "a1"), (2, "b0"), (3, "b1")]);
        let usage = usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (4, 6));
        assert_eq!(joined["usage"]["total_tokens"], 10);
        // A part without usage: the gateway counts the whole.
        let (joined, usage) = crate::join_choices(vec![
            part("cmpl-1", ["a0", "a1"], Some((1, 2))),
            part("cmpl-2", ["b0", "b1"], None),
        ]);
        assert!(usage.is_none());
        assert!(joined.into_map().get("usage").is_none());
    }

    #[test]
    fn the_chat_answer_comes_back_as_a_text_completion() {
        let reply =
            br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5",
            "content":[{"type":"text","text":" is a test"}],"stop_reason":"max_tokens",
            "usage":{"input_tokens":5,"output_tokens":4}}"#;
        for (echo, text) in [(false, " is a test"), (true, "This is a test")] {
            let request = map(json!({"model": "m", "prompt": "This", "echo": echo}));
            let (answer, usage) = via()
                .parse(Endpoint::Completions, "anthropic", &request, reply)
                .unwrap();
            assert_eq!(answer["object"], "text_completion");
            assert_eq!(answer["id"], "msg_1");
            assert_eq!(
                answer["choices"],
                json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": "length"}])
            );
            let usage = usage.unwrap();
            assert_eq!((usage.prompt_tokens, usage.completion_tokens), (5, 4));
        }
    }

    #[test]
    fn a_chat_stream_comes_back_as_text_completion_chunks() {
        let transcript = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" is\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" a test\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let request = RequestBody::from_map(map(
            json!({"model": "m", "prompt": "This", "echo": true, "stream": true}),
        ));
        let mut d = via().stream_decoder(Endpoint::Completions, "anthropic", "m", &request);
        let mut p = sse::Parser::new();
        let mut events = Vec::new();
        p.feed(transcript.as_bytes(), &mut events);
        let mut items = Vec::new();
        for ev in &events {
            d.on_event(ev, &mut items).unwrap();
        }
        d.finish(&mut items).unwrap();
        assert_eq!(items.last(), Some(&StreamItem::Done));
        let mut text = String::new();
        let mut finish = Vec::new();
        let mut usage = None;
        for it in &items {
            let chunk: Value = match it {
                StreamItem::Chunk(b) => serde_json::from_slice(b).unwrap(),
                StreamItem::Usage(u, r) => {
                    usage = Some(*u);
                    serde_json::from_slice(&r.to_bytes().unwrap()).unwrap()
                }
                StreamItem::Done => continue,
            };
            assert_eq!(chunk["object"], "text_completion", "{chunk}");
            assert_eq!(chunk["id"], "msg_1");
            for c in chunk["choices"].as_array().unwrap() {
                assert!(c.get("delta").is_none());
                text.push_str(c["text"].as_str().unwrap());
                if !c["finish_reason"].is_null() {
                    finish.push(c["finish_reason"].clone());
                }
            }
        }
        assert_eq!(text, "This is a test");
        assert_eq!(finish, vec![json!("stop")]);
        assert!(d.saw_usage());
        let usage = usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (5, 3));
    }
}
