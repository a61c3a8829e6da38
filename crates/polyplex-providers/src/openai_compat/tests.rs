use super::*;
use crate::sse::Parser;
use crate::{AuthStyle, Reply, StreamItem};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde_json::json;

const CHAT_REQUEST: &str = include_str!("fixtures/chat_request.json");
const CHAT_RESPONSE: &str = include_str!("fixtures/chat_response.json");
const CHAT_STREAM: &str = include_str!("fixtures/chat_stream.txt");
const CHAT_STREAM_TOOLS: &str = include_str!("fixtures/chat_stream_tools.txt");

fn target<'a>(auth: &'a AuthStyle, headers: &'a [(HeaderName, HeaderValue)]) -> Target<'a> {
    Target {
        provider: "openai",
        base_url: "https://api.openai.com/v1/",
        api_key: Some("sk-test"),
        credential: None,
        auth,
        model: "gpt-4o-2024-08-06",
        extra_headers: headers,
        stream_usage: true,
        default_max_tokens: None,
        drop_params: false,
        api_version: None,
        sigv4: None,
    }
}

fn body() -> JsonMap {
    serde_json::from_str(CHAT_REQUEST).unwrap()
}

#[test]
fn request_keeps_every_parameter_and_replaces_model() {
    let auth = AuthStyle::bearer();
    let req = OpenAiCompat
        .build(Endpoint::Chat, &body(), false, &target(&auth, &[]))
        .unwrap();
    assert_eq!(req.url, "https://api.openai.com/v1/chat/completions");
    assert_eq!(req.headers["authorization"], "Bearer sk-test");
    assert!(req.headers["authorization"].is_sensitive());
    let sent: JsonMap = serde_json::from_slice(&req.body).unwrap();
    let mut expect = body();
    expect.insert("model".into(), "gpt-4o-2024-08-06".into());
    expect.remove("models");
    expect.remove("provider");
    // `metadata` without `store: true` is the gateway's (OpenAI refuses it
    // there): left out.
    expect.remove("metadata");
    assert_eq!(sent, expect);
    // Order is kept too: the body is the client's, byte for byte but for the model.
    let keys: Vec<_> = sent.keys().cloned().collect();
    let mut want: Vec<_> = body().keys().cloned().collect();
    want.retain(|k| k != "models" && k != "provider" && k != "metadata");
    assert_eq!(keys, want);
}

/// `metadata` goes to OpenAI only with `store: true` (a stored completion's
/// tags there); otherwise it is the gateway's alone, for the usage record,
/// and the client's bytes are not sent as they are.
#[test]
fn metadata_is_sent_only_with_a_stored_completion() {
    let sent = |b: serde_json::Value| -> JsonMap {
        let (sent, _) = build_from(&b.to_string(), false, true);
        serde_json::from_slice(&sent).unwrap()
    };
    let plain = json!({"model": "gpt-4o-2024-08-06", "messages": [{"role": "user", "content": "hi"}],
        "metadata": {"team": "search"}});
    assert!(sent(plain.clone()).get("metadata").is_none());
    let mut stored = plain.clone();
    stored["store"] = json!(true);
    assert_eq!(sent(stored)["metadata"], json!({"team": "search"}));
    let mut not_stored = plain;
    not_stored["store"] = json!(false);
    let out = sent(not_stored);
    assert!(out.get("metadata").is_none());
    assert_eq!(out["store"], json!(false));
}

#[test]
fn streaming_request_asks_for_usage_and_keeps_other_options() {
    let auth = AuthStyle::bearer();
    let mut b = body();
    b.insert("stream".into(), true.into());
    let req = OpenAiCompat
        .build(Endpoint::Chat, &b, true, &target(&auth, &[]))
        .unwrap();
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        sent["stream_options"],
        serde_json::json!({"include_usage": true})
    );
    b.insert(
        "stream_options".into(),
        serde_json::json!({"include_usage": false, "x": 1}),
    );
    let req = OpenAiCompat
        .build(Endpoint::Chat, &b, true, &target(&auth, &[]))
        .unwrap();
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        sent["stream_options"],
        serde_json::json!({"x": 1, "include_usage": true})
    );
    // A provider that rejects stream_options gets the body untouched.
    let mut t = target(&auth, &[]);
    t.stream_usage = false;
    b.remove("stream_options");
    let req = OpenAiCompat.build(Endpoint::Chat, &b, true, &t).unwrap();
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    assert!(sent.get("stream_options").is_none());
}

#[test]
fn auth_quirks_and_extra_headers() {
    let auth = AuthStyle {
        header: HeaderName::from_static("api-key"),
        prefix: String::new(),
    };
    let extra = [(
        HeaderName::from_static("http-referer"),
        HeaderValue::from_static("https://example.com"),
    )];
    let req = OpenAiCompat
        .build(Endpoint::Embeddings, &body(), false, &target(&auth, &extra))
        .unwrap();
    assert_eq!(req.url, "https://api.openai.com/v1/embeddings");
    assert_eq!(req.headers["api-key"], "sk-test");
    assert!(req.headers.get("authorization").is_none());
    assert_eq!(req.headers["http-referer"], "https://example.com");
    // No key (Ollama, vLLM): no auth header at all.
    let bearer = AuthStyle::bearer();
    let mut t = target(&bearer, &[]);
    t.api_key = None;
    let req = OpenAiCompat
        .build(Endpoint::Completions, &body(), false, &t)
        .unwrap();
    assert!(req.headers.get("authorization").is_none());
    assert!(req.url.ends_with("/v1/completions"));
}

#[test]
fn response_parsed_with_usage() {
    let (map, usage) = OpenAiCompat
        .parse(
            Endpoint::Chat,
            "openai",
            &JsonMap::new(),
            CHAT_RESPONSE.as_bytes(),
        )
        .unwrap();
    assert_eq!(map["id"], "chatcmpl-123");
    let u = usage.unwrap();
    assert_eq!((u.prompt_tokens, u.completion_tokens), (9, 12));
    let e = OpenAiCompat
        .parse(Endpoint::Chat, "openai", &JsonMap::new(), b"<html>")
        .unwrap_err();
    assert_eq!(e.status, StatusCode::BAD_GATEWAY);
    assert!(e.retryable);
    let e = OpenAiCompat
        .parse(
            Endpoint::Chat,
            "openai",
            &JsonMap::new(),
            br#"{"error":{"message":"boom"}}"#,
        )
        .unwrap_err();
    assert_eq!(e.message, "boom");
}

#[test]
fn errors_keep_upstream_message_and_map_status() {
    let e = OpenAiCompat.error(
        "openai",
        StatusCode::UNAUTHORIZED,
        include_bytes!("fixtures/error_401.json"),
    );
    assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    assert_eq!(e.code.as_deref(), Some("invalid_api_key"));
    assert!(!e.retryable);
    let e = e.redact("sk-proj-SECRET123");
    assert!(!e.message.contains("SECRET123"));

    let e = OpenAiCompat.error(
        "openai",
        StatusCode::TOO_MANY_REQUESTS,
        include_bytes!("fixtures/error_429.json"),
    );
    assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e.kind, "rate_limit_error");
    assert!(e.retryable);
    assert!(e.message.starts_with("Rate limit reached"));

    let e = OpenAiCompat.error(
        "openai",
        StatusCode::BAD_REQUEST,
        include_bytes!("fixtures/error_400_param.json"),
    );
    assert_eq!(
        (e.status, e.param.as_deref()),
        (StatusCode::BAD_REQUEST, Some("temperature"))
    );

    let e = OpenAiCompat.error(
        "vllm",
        StatusCode::UNPROCESSABLE_ENTITY,
        br#"{"object":"error","message":"bad","type":"BadRequestError","code":400}"#,
    );
    assert_eq!(
        (e.status, e.message.as_str()),
        (StatusCode::BAD_REQUEST, "bad")
    );
    let e = OpenAiCompat.error("x", StatusCode::INTERNAL_SERVER_ERROR, b"<html>oops</html>");
    assert_eq!(e.status, StatusCode::BAD_GATEWAY);
    assert!(e.retryable);
    let e = OpenAiCompat.error("x", StatusCode::SERVICE_UNAVAILABLE, b"overloaded");
    assert_eq!(
        (e.status, e.message.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
    );
    let e = OpenAiCompat.error("x", StatusCode::GATEWAY_TIMEOUT, b"");
    assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT);
}

fn decode(transcript: &str, split: usize) -> (Vec<StreamItem>, Result<(), GatewayError>, Decoder) {
    let mut parser = Parser::new();
    let mut dec = Decoder::new(Endpoint::Chat, "openai");
    let mut events = Vec::new();
    for piece in transcript.as_bytes().chunks(split) {
        parser.feed(piece, &mut events);
    }
    let mut out = Vec::new();
    for ev in &events {
        if let Err(e) = dec.on_event(ev, &mut out) {
            return (out, Err(e), dec);
        }
    }
    let end = dec.finish(&mut out);
    (out, end, dec)
}

#[test]
fn stream_passes_chunks_through_and_extracts_usage() {
    for split in [1, 7, 64, 4096] {
        let (out, end, dec) = decode(CHAT_STREAM, split);
        end.unwrap();
        assert_eq!(out.len(), 6, "split {split}");
        // Content chunks are the upstream's bytes unchanged.
        let first_line = CHAT_STREAM
            .lines()
            .next()
            .unwrap()
            .strip_prefix("data: ")
            .unwrap();
        assert_eq!(
            out[0],
            StreamItem::Chunk(Bytes::copy_from_slice(first_line.as_bytes()))
        );
        match &out[4] {
            StreamItem::Usage(u, chunk) => {
                assert_eq!((u.prompt_tokens, u.completion_tokens), (9, 3));
                assert!(matches!(chunk, Reply::Raw(_)), "kept raw: {chunk:?}");
                let chunk = chunk.clone().into_map();
                assert_eq!(chunk["id"], "chatcmpl-123");
            }
            other => panic!("expected usage, got {other:?}"),
        }
        assert_eq!(out[5], StreamItem::Done);
        assert!(dec.saw_usage());
        assert_eq!(dec.summary().completion_text, "Hello there!");
    }
}

#[test]
fn stream_of_tool_call_fragments_summarized() {
    let (out, end, dec) = decode(CHAT_STREAM_TOOLS, 13);
    end.unwrap();
    assert_eq!(
        out.iter()
            .filter(|i| matches!(i, StreamItem::Chunk(_)))
            .count(),
        4
    );
    assert!(!dec.saw_usage());
    let s = dec.summary();
    assert_eq!(s.id.as_deref(), Some("chatcmpl-9"));
    assert_eq!(s.model.as_deref(), Some("gpt-4o"));
    assert_eq!(
        s.completion_text,
        "get_current_weather{\"location\": \"Paris\"}"
    );
}

#[test]
fn truncated_stream_is_an_error() {
    let cut: String = CHAT_STREAM
        .split("\n\n")
        .take(2)
        .collect::<Vec<_>>()
        .join("\n\n")
        + "\n\n";
    let (_, end, _) = decode(&cut, 4096);
    let e = end.unwrap_err();
    assert!(e.retryable);
    assert!(e.message.contains("ended before"));
}

#[test]
fn error_event_mid_stream_is_an_error() {
    let s = "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\ndata: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n";
    let (out, end, _) = decode(s, 4096);
    assert_eq!(out.len(), 1);
    assert_eq!(end.unwrap_err().message, "overloaded");
}

#[test]
fn usage_on_a_content_chunk_is_split_off() {
    let s = "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n";
    let (out, end, _) = decode(s, 4096);
    end.unwrap();
    assert!(matches!(&out[0], StreamItem::Chunk(b) if !b.is_empty()));
    assert!(
        matches!(&out[1], StreamItem::Usage(u, c) if u.total() == 4 && c.clone().into_map()["choices"].as_array().unwrap().is_empty())
    );
}

fn build_from(text: &str, stream: bool, stream_usage: bool) -> (Bytes, Bytes) {
    let auth = AuthStyle::bearer();
    let mut t = target(&auth, &[]);
    t.stream_usage = stream_usage;
    let map: JsonMap = serde_json::from_str(text).unwrap();
    let raw = Bytes::copy_from_slice(text.as_bytes());
    let from = OpenAiCompat
        .build_from(
            Endpoint::Chat,
            &RequestBody::parsed(raw.clone(), map.clone()),
            stream,
            &t,
        )
        .unwrap();
    // A body validated from its text sends the same JSON, edited in its
    // own bytes, without building its tree (unless stream_options must be
    // rewritten).
    if let Some((_, shape)) = polyplex_types::validate::chat_quick(text.as_bytes()) {
        let quick = RequestBody::quick(raw.clone(), shape);
        let sent = OpenAiCompat
            .build_from(Endpoint::Chat, &quick, stream, &t)
            .unwrap();
        let a: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&from.body).unwrap();
        assert_eq!(a, b, "{text}");
        let rewrites_options = stream
            && stream_usage
            && map
                .get("stream_options")
                .is_some_and(|o| o.get("include_usage") != Some(&serde_json::Value::Bool(true)));
        assert_eq!(quick.has_tree(), rewrites_options, "{text}");
    }
    let built = OpenAiCompat
        .build(Endpoint::Chat, &map, stream, &t)
        .unwrap();
    assert_eq!(from.url, built.url);
    assert_eq!(from.headers, built.headers);
    // Whatever the route, the upstream reads the same request.
    let a: serde_json::Value = serde_json::from_slice(&from.body).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&built.body).unwrap();
    assert_eq!(a, b, "{text}");
    (from.body, raw)
}

#[test]
fn a_body_that_needs_no_change_is_forwarded_as_the_client_sent_it() {
    let text = "{\"model\": \"gpt-4o-2024-08-06\", \"messages\":[{\"role\":\"user\",\"content\":\"hi\"}], \"temperature\": 1e0}";
    let (sent, raw) = build_from(text, false, true);
    assert_eq!(sent, raw);
    assert_eq!(sent.as_ptr(), raw.as_ptr(), "not even copied");
}

#[test]
fn a_stream_without_stream_options_gets_them_put_first() {
    let text = " {\"model\":\"gpt-4o-2024-08-06\",\"messages\":[],\"stream\":true}";
    let (sent, _) = build_from(text, true, true);
    assert_eq!(
        std::str::from_utf8(&sent).unwrap(),
        " {\"stream_options\":{\"include_usage\":true},\"model\":\"gpt-4o-2024-08-06\",\"messages\":[],\"stream\":true}"
    );
    // Already asked for: as sent. Upstream that refuses stream_options: as sent.
    let asked = "{\"model\":\"gpt-4o-2024-08-06\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}";
    assert_eq!(build_from(asked, true, true).0, asked.as_bytes());
    assert_eq!(build_from(text, true, false).0, text.as_bytes());
}

/// What a quick-validated body sends, and whether its tree was built.
fn quick_sent(text: &str, stream: bool) -> (String, bool) {
    let auth = AuthStyle::bearer();
    let t = target(&auth, &[]);
    let (_, shape) = polyplex_types::validate::chat_quick(text.as_bytes()).expect("quick");
    let body = RequestBody::quick(Bytes::copy_from_slice(text.as_bytes()), shape);
    let sent = OpenAiCompat
        .build_from(Endpoint::Chat, &body, stream, &t)
        .unwrap();
    (
        String::from_utf8(sent.body.to_vec()).unwrap(),
        body.has_tree(),
    )
}

#[test]
fn a_common_body_gets_the_upstream_model_in_its_own_bytes() {
    let text = r#"{ "model" : "openai/gpt-4o-2024-08-06","messages":[{"role":"user","content":"hi"}], "stream": true}"#;
    assert_eq!(
        quick_sent(text, true),
        (
            r#"{"stream_options":{"include_usage":true}, "model" : "gpt-4o-2024-08-06","messages":[{"role":"user","content":"hi"}], "stream": true}"#.to_string(),
            false
        )
    );
    let text =
        r#"{"messages":[{"role":"user","content":"hi"}],"model":"openai/gpt-4o-2024-08-06"} "#;
    assert_eq!(
        quick_sent(text, false),
        (
            r#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-4o-2024-08-06"} "#
                .to_string(),
            false
        )
    );
}

#[test]
fn a_body_that_needs_a_change_is_encoded_again() {
    for text in [
        // another model name upstream
        "{\"model\":\"openai/gpt-4o\",\"messages\":[]}",
        // gateway-only members
        "{\"model\":\"gpt-4o-2024-08-06\",\"models\":[\"x\"],\"messages\":[]}",
        "{\"model\":\"gpt-4o-2024-08-06\",\"provider\":{\"order\":[\"a\"]},\"messages\":[]}",
    ] {
        let (sent, raw) = build_from(text, false, true);
        assert_ne!(sent, raw, "{text}");
    }
    // stream_options without include_usage: rewritten with it.
    let text = "{\"model\":\"gpt-4o-2024-08-06\",\"stream\":true,\"stream_options\":{\"include_usage\":false,\"x\":1}}";
    let (sent, _) = build_from(text, true, true);
    let v: serde_json::Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(
        v["stream_options"],
        serde_json::json!({"x": 1, "include_usage": true})
    );
}

#[test]
fn choices_emptiness_is_read_from_the_raw_text() {
    for (text, has) in [
        (r#"{"choices":[]}"#, false),
        (r#"{"choices":[ ]}"#, false),
        (r#"{"choices": [ {"index":0} ]}"#, true),
        (r#"{"choices":null}"#, false),
        (r#"{"usage":{}}"#, false),
    ] {
        let raw = crate::RawReply::parse(Bytes::from(text)).unwrap();
        assert_eq!(super::stream::has_choices(&raw), has, "{text}");
    }
}

/// OpenAI's own API and Azure's refuse members they do not know:
/// `cache_control` (they cache on their own) and what an assistant turn
/// carries back from Claude's or Gemini 3's answers are taken out, and
/// named; every other OpenAI-protocol provider gets the body as sent
/// (OpenRouter takes breakpoints for Claude, Kimi wants its reasoning back).
#[test]
fn foreign_members_reach_only_providers_that_take_them() {
    let auth = AuthStyle::bearer();
    let eph = json!({"type": "ephemeral"});
    // Breakpoints, and an assistant turn sent back as Claude's and Gemini
    // 3's answers through polyplex give it.
    let marked: JsonMap = serde_json::from_value(json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "rules", "cache_control": eph}]},
        {"role": "user", "content": "q", "cache_control": eph},
        {"role": "assistant", "content": null, "reasoning_content": "hmm",
            "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "s"}],
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"},
                "extra_content": {"google": {"thought_signature": "t"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}],
        "tools": [{"type": "function", "function": {"name": "f"}, "cache_control": eph}]}))
    .unwrap();
    for base_url in [
        "https://api.openai.com/v1",
        "https://my-resource.openai.azure.com/openai",
        "https://api.mistral.ai/v1",
        "https://api.groq.com/openai/v1",
    ] {
        let t = Target {
            base_url,
            ..target(&auth, &[])
        };
        let body = RequestBody::from_map(marked.clone());
        let req = OpenAiCompat
            .build_from(Endpoint::Chat, &body, false, &t)
            .unwrap();
        assert_eq!(
            req.dropped,
            [
                "cache_control",
                "messages[].reasoning_content",
                "messages[].thinking_blocks",
                "messages[].tool_calls[].extra_content"
            ],
            "{base_url}"
        );
        let sent: Value = serde_json::from_slice(&req.body).unwrap();
        let text = sent.to_string();
        for gone in [
            "cache_control",
            "reasoning_content",
            "thinking_blocks",
            "extra_content",
        ] {
            assert!(!text.contains(gone), "{base_url}: {gone} in {sent}");
        }
        assert_eq!(sent["messages"][0]["content"][0]["text"], "rules");
        assert_eq!(sent["messages"][2]["tool_calls"][0]["id"], "c1");
        assert_eq!(sent["tools"][0]["function"]["name"], "f");
    }
    let t = Target {
        base_url: "https://openrouter.ai/api/v1",
        ..target(&auth, &[])
    };
    let req = OpenAiCompat
        .build(Endpoint::Chat, &marked, false, &t)
        .unwrap();
    assert!(req.dropped.is_empty());
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(sent["messages"][1]["cache_control"], eph);
    assert_eq!(sent["tools"][0]["cache_control"], eph);
    assert_eq!(sent["messages"][2]["reasoning_content"], "hmm");
}
