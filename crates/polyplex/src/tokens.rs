//! Token counts for when an upstream does not report usage, with tiktoken's
//! o200k_base encoding (GPT-4o's). For other model families it is an
//! estimate, and the usage record says so (`estimated`).

use polyplex_types::{JsonMap, Usage};
use serde_json::Value;
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

/// The encoding, loaded on first need: it takes about 50 MiB and 100 ms,
/// and most deployments never need it (upstreams report usage), so it is
/// not loaded at startup — unless the configuration routes by cost, which
/// counts every request's prompt ([`warm_in_background`]). The one load
/// runs through `block_in_place` on a multi-thread runtime, so the worker's
/// other tasks move elsewhere meanwhile; on a serving thread's
/// single-threaded runtime it runs inline, a one-time pause of that
/// thread's connections (a request that needs a count while the background
/// load runs waits for it).
fn bpe() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    if let Some(b) = BPE.get() {
        return b.as_ref();
    }
    let load = || BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref();
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(load)
        }
        _ => load(),
    }
}

/// Loads the encoding on a thread of its own (see [`bpe`]).
pub fn warm_in_background() {
    let started = std::thread::Builder::new()
        .name("polyplex-tokens".into())
        .spawn(|| {
            let t = std::time::Instant::now();
            if bpe().is_some() {
                tracing::info!(
                    ms = t.elapsed().as_millis() as u64,
                    "token encoding loaded ahead of the first count (cost routing counts every prompt)"
                );
            }
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot load the token encoding ahead; the first count will");
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
pub fn stream_estimate(
    endpoint: polyplex_providers::Endpoint,
    request: &JsonMap,
    completion_text: &str,
) -> Usage {
    Usage {
        prompt_tokens: prompt(endpoint, request),
        completion_tokens: count(completion_text),
        estimated: true,
        ..Usage::default()
    }
}

/// A request's prompt tokens: the chat messages, or the legacy `prompt`,
/// or the embeddings `input`.
pub fn prompt(endpoint: polyplex_providers::Endpoint, request: &JsonMap) -> u64 {
    use polyplex_providers::Endpoint;
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

/// Sets the reasoning tokens of `u` when the model thought and its
/// upstream did not count them apart; whether it did.
pub fn stream_reasoning(u: &mut Usage, decoder: &dyn polyplex_providers::StreamDecoder) -> bool {
    if u.reasoning_tokens > 0 || u.completion_tokens == 0 || !decoder.reasoned() {
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
    if u.reasoning_tokens > 0 || u.completion_tokens == 0 {
        return false;
    }
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
    if !thought {
        return false;
    }
    u.reasoning_tokens = reasoning_estimate(u.completion_tokens, &completion_text(resp), &thinking);
    true
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
