use super::*;
use crate::sse::Parser;
use crate::{AuthStyle, Protocol, StreamItem, Target};
use http::HeaderName;
use serde_json::json;

fn auth() -> AuthStyle {
    AuthStyle {
        header: HeaderName::from_static("x-api-key"),
        prefix: String::new(),
    }
}

fn target(a: &AuthStyle) -> Target<'_> {
    Target {
        provider: "anthropic",
        base_url: "https://api.anthropic.com",
        api_key: Some("sk-ant-test"),
        credential: None,
        auth: a,
        model: "claude-sonnet-4-5",
        extra_headers: &[],
        stream_usage: true,
        default_max_tokens: Some(64000),
        drop_params: false,
        api_version: None,
        sigv4: None,
    }
}

fn map(v: Value) -> JsonMap {
    v.as_object().unwrap().clone()
}

fn build(v: Value) -> Result<(Value, crate::UpstreamRequest), GatewayError> {
    let a = auth();
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let req = Anthropic.build(Endpoint::Chat, &map(v), stream, &target(&a))?;
    Ok((serde_json::from_slice(&req.body).unwrap(), req))
}

#[test]
fn request_translation() {
    let (sent, req) = build(json!({
        "model": "anthropic/claude-sonnet-4-5",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
            {"role": "user", "content": [{"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]},
            {"role": "assistant", "content": "Let me look it up.", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"cat\"}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"dog\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "a cat"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "no dog"},
            {"role": "user", "content": "So?"}
        ],
        "temperature": 0.5, "top_p": 0.9, "stop": "END", "max_completion_tokens": 300, "user": "u-1",
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "Look up", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
        "tool_choice": "required", "parallel_tool_calls": false, "models": ["x"], "provider": {"order": ["anthropic"]}
    }))
    .unwrap();
    assert_eq!(req.url, "https://api.anthropic.com/v1/messages");
    assert_eq!(req.headers["x-api-key"], "sk-ant-test");
    assert_eq!(req.headers["anthropic-version"], VERSION);
    assert!(req.headers.get("authorization").is_none());
    assert_eq!(
        sent,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 300,
            "system": "You are terse.\n\nUse metric.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "What is in this image?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Let me look it up."},
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "cat"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "lookup", "input": {"q": "dog"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a cat"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "no dog"},
                    {"type": "text", "text": "So?"}]}
            ],
            "temperature": 0.5, "top_p": 0.9, "stop_sequences": ["END"], "metadata": {"user_id": "u-1"},
            "tools": [{"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}, "description": "Look up"}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
        })
    );
}

#[test]
fn max_tokens_default_and_tool_choices() {
    let (sent, _) = build(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}),
    )
    .unwrap();
    assert_eq!(
        (sent["max_tokens"].as_u64(), sent["stream"].as_bool()),
        (Some(64000), Some(true))
    );
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    for (choice, want) in [
        (json!("auto"), json!({"type": "auto"})),
        (json!("none"), json!({"type": "none"})),
        (
            json!({"type": "function", "function": {"name": "f"}}),
            json!({"type": "tool", "name": "f"}),
        ),
    ] {
        let (sent, _) = build(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": choice})).unwrap();
        assert_eq!(sent["tool_choice"], want);
        assert_eq!(
            sent["tools"][0]["input_schema"],
            json!({"type": "object", "properties": {}})
        );
    }
}

#[test]
fn response_format_becomes_a_forced_tool() {
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
    let (sent, _) = build(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})).unwrap();
    assert_eq!(sent["tools"][0]["name"], JSON_TOOL);
    assert_eq!(sent["tools"][0]["input_schema"], schema);
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": JSON_TOOL})
    );
    // The tool's input comes back as the message content.
    let reply = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "stop_reason": "tool_use",
        "content": [{"type": "tool_use", "id": "t", "name": JSON_TOOL, "input": {"n": 3}}], "usage": {"input_tokens": 5, "output_tokens": 2}});
    let req =
        map(json!({"model": "m", "messages": [], "response_format": {"type": "json_object"}}));
    let (out, _) = Anthropic
        .parse(
            Endpoint::Chat,
            "anthropic",
            &req,
            reply.to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], "{\"n\":3}");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert!(out["choices"][0]["message"].get("tool_calls").is_none());
}

#[test]
fn unsupported_parameters_are_refused_or_dropped_and_named() {
    for (k, v) in [
        ("seed", json!(1)),
        ("n", json!(2)),
        ("presence_penalty", json!(0.5)),
        ("logit_bias", json!({"1": 1})),
        ("logprobs", json!(true)),
        ("some_new_param", json!(1)),
        ("store", json!(true)),
        ("service_tier", json!("priority")),
        ("temperature", json!(1.5)),
    ] {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        body[k] = v.clone();
        let e = build(body.clone()).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (400, Some(k)),
            "{k}"
        );
        let a = auth();
        let mut t = target(&a);
        t.drop_params = true;
        let req = Anthropic
            .build(Endpoint::Chat, &map(body), false, &t)
            .unwrap();
        assert_eq!(req.dropped, vec![k.to_string()]);
        let sent: Value = serde_json::from_slice(&req.body).unwrap();
        assert!(sent.get(k).is_none());
    }
    // `metadata` is the gateway's (the usage record's tags): taken, not
    // sent (Anthropic's own `metadata` carries the end user only).
    let (sent, req) = build(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "metadata": {"team": "search"}, "user": "u-1"}),
    )
    .unwrap();
    assert!(req.dropped.is_empty());
    assert_eq!(sent["metadata"], json!({"user_id": "u-1"}));
    // n = 1, null values and the other values that ask for nothing are
    // fine (all of them: `tests::parameters_that_ask_nothing_are_honoured_everywhere`).
    assert!(build(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 1, "seed": null,
            "presence_penalty": 0, "store": false, "service_tier": "auto"})
    )
    .is_ok());
    let e = Anthropic
        .build(
            Endpoint::Embeddings,
            &JsonMap::new(),
            false,
            &target(&auth()),
        )
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("unsupported_endpoint"));
}

#[test]
fn responses_translate_with_usage() {
    let req = JsonMap::new();
    let (out, usage) = Anthropic
        .parse(
            Endpoint::Chat,
            "anthropic",
            &req,
            include_bytes!("fixtures/message_response.json"),
        )
        .unwrap();
    assert_eq!(out["id"], "msg_013Zva2CMHLNnXjNJJKqJ2EF");
    assert_eq!(out["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "Hi! My name is Claude."
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    let u = usage.unwrap();
    assert_eq!(
        (u.prompt_tokens, u.cached_tokens, u.completion_tokens),
        (3095, 1000, 503)
    );
    assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 1000);

    let (out, _) = Anthropic
        .parse(
            Endpoint::Chat,
            "anthropic",
            &req,
            include_bytes!("fixtures/tool_use_response.json"),
        )
        .unwrap();
    let m = &out["choices"][0]["message"];
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(m["content"], "I'll check the weather.");
    assert_eq!(m["tool_calls"][0]["id"], "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(m["tool_calls"][0]["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(
        m["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        args,
        json!({"location": "San Francisco, CA", "unit": "celsius"})
    );
}

#[test]
fn errors_map_to_openai_statuses() {
    let e = Anthropic.error(
        "anthropic",
        StatusCode::from_u16(529).unwrap(),
        include_bytes!("fixtures/error_overloaded.json"),
    );
    assert_eq!(
        (e.status.as_u16(), e.retryable, e.message.as_str()),
        (503, true, "Overloaded")
    );
    let e = Anthropic.error(
        "anthropic",
        StatusCode::BAD_REQUEST,
        include_bytes!("fixtures/error_invalid.json"),
    );
    assert_eq!((e.status.as_u16(), e.retryable), (400, false));
    assert!(e.message.contains("roles must alternate"));
    let e = Anthropic.error(
        "anthropic",
        StatusCode::TOO_MANY_REQUESTS,
        br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}"#,
    );
    assert_eq!(
        (e.status.as_u16(), e.kind, e.retryable),
        (429, "rate_limit_error", true)
    );
    let e = Anthropic.error("anthropic", StatusCode::UNAUTHORIZED, br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#);
    assert_eq!(e.status.as_u16(), 401);
}

fn decode(
    transcript: &str,
    json_mode: bool,
    split: usize,
) -> (Vec<Value>, Option<(Usage, JsonMap)>, Decoder) {
    decode_with(Decoder::new("anthropic", json_mode), transcript, split)
}

/// [`decode`] through the decoder given (one told of a web search).
fn decode_with(
    mut d: Decoder,
    transcript: &str,
    split: usize,
) -> (Vec<Value>, Option<(Usage, JsonMap)>, Decoder) {
    let mut p = Parser::new();
    let mut events = Vec::new();
    for piece in transcript.as_bytes().chunks(split) {
        p.feed(piece, &mut events);
    }
    let mut items = Vec::new();
    for ev in &events {
        d.on_event(ev, &mut items).unwrap();
    }
    d.finish(&mut items).unwrap();
    assert_eq!(items.last(), Some(&StreamItem::Done));
    let mut chunks = Vec::new();
    let mut usage = None;
    for it in items {
        match it {
            StreamItem::Chunk(b) => chunks.push(serde_json::from_slice(&b).unwrap()),
            StreamItem::Usage(u, c) => usage = Some((u, c.into_map())),
            StreamItem::Done => {}
        }
    }
    (chunks, usage, d)
}

#[test]
fn text_stream_becomes_openai_chunks() {
    for split in [1, 9, 4096] {
        let (chunks, usage, d) = decode(include_str!("fixtures/stream_text.txt"), false, split);
        assert!(chunks
            .iter()
            .all(|c| c["id"] == "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"
                && c["model"] == "claude-sonnet-4-5-20250929"));
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"));
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello!");
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
        let (u, c) = usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (25, 15));
        assert_eq!(c["choices"], json!([]));
        assert_eq!(c["id"], "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY");
        assert_eq!(d.summary().completion_text, "Hello!");
    }
}

#[test]
fn tool_use_stream_gives_indexed_tool_call_deltas() {
    let (chunks, usage, _) = decode(include_str!("fixtures/stream_tool_use.txt"), false, 17);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["id"], "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert!(calls[1..]
        .iter()
        .all(|c| c.get("id").is_none() && c["index"] == 0));
    let args: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"location": "San Francisco, CA"})
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    assert_eq!(usage.unwrap().0.completion_tokens, 89);
}

#[test]
fn json_mode_stream_sends_the_tool_input_as_content() {
    let t = include_str!("fixtures/stream_tool_use.txt").replace("get_weather", JSON_TOOL);
    let (chunks, _, _) = decode(&t, true, 4096);
    assert!(chunks
        .iter()
        .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        "Okay, let's check the weather.{\"location\": \"San Francisco, CA\"}"
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[test]
fn truncated_stream_and_error_events_fail() {
    let t = include_str!("fixtures/stream_text.txt");
    let cut = &t[..t.find("event: message_delta").unwrap()];
    let mut p = Parser::new();
    let mut events = Vec::new();
    p.feed(cut.as_bytes(), &mut events);
    let mut d = Decoder::new("anthropic", false);
    let mut items = Vec::new();
    for ev in &events {
        d.on_event(ev, &mut items).unwrap();
    }
    assert!(d.finish(&mut items).unwrap_err().retryable);
    let mut events = Vec::new();
    p.feed(b"event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n", &mut events);
    let e = d.on_event(&events[0], &mut items).unwrap_err();
    assert_eq!((e.status.as_u16(), e.message.as_str()), (503, "Overloaded"));
}

/// `content_block_delta` events are read into borrowed fields; every shape
/// gives what the general (tree) path gives: named by `event:` or only by
/// `type`, escaped text, and shapes the typed read refuses (no index, a
/// text that is not a string), which fall back to the tree.
#[test]
fn delta_events_read_without_a_tree_answer_as_the_tree() {
    let start = r#"{"type":"message_start","message":{"id":"msg_1","model":"claude","usage":{"input_tokens":3,"output_tokens":1}}}"#;
    let tool = r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#;
    let deltas = [
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi \"there\"\n\u00e9"}}"#,
        r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"no index"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":null}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":7}}"#,
        r#"{"index":0,"type":"content_block_delta","delta":{"text":"x","type":"text_delta","extra":[1,{"a":2}]}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\": 1"}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"}"},"more":null}"#,
    ];
    let run = |named: bool, via_tree: bool| {
        let mut d = Decoder::new("anthropic", false);
        let mut out = Vec::new();
        let ev = |name: &str, data: &str| crate::sse::Event {
            event: named.then(|| name.to_string()),
            data: data.to_string(),
        };
        d.on_event(&ev("message_start", start), &mut out).unwrap();
        d.on_event(&ev("content_block_start", tool), &mut out)
            .unwrap();
        for data in deltas {
            if via_tree {
                // The general path, as the decoder takes it for shapes the
                // typed read refuses.
                let v: Value = serde_json::from_str(data).unwrap();
                let delta = &v["delta"];
                d.on_delta(
                    v["index"].as_u64().unwrap_or(0),
                    delta["type"].as_str(),
                    delta[stream::text_member(delta["type"].as_str())].as_str(),
                    delta["partial_json"].as_str(),
                    &mut out,
                )
                .unwrap();
            } else {
                d.on_event(&ev("content_block_delta", data), &mut out)
                    .unwrap();
            }
        }
        (out, d.summary().completion_text)
    };
    let (tree, tree_text) = run(true, true);
    assert_eq!(tree_text, "fHi \"there\"\n\u{e9}no indexx{\"a\": 1}");
    for named in [true, false] {
        let (typed, text) = run(named, false);
        assert_eq!(typed, tree, "named by event: {named}");
        assert_eq!(text, tree_text);
    }
    let Some(StreamItem::Chunk(b)) = tree.get(2) else {
        panic!("no text chunk: {tree:?}")
    };
    let c: Value = serde_json::from_slice(b).unwrap();
    assert_eq!(
        c["choices"][0]["delta"],
        json!({"content": "Hi \"there\"\n\u{e9}"})
    );
    // A block index that is not a number names no block, on either path.
    let mut d = Decoder::new("anthropic", false);
    let bad = crate::sse::Event {
        event: Some("content_block_delta".into()),
        data: r#"{"type":"content_block_delta","index":"1","delta":{"type":"input_json_delta","partial_json":"}"}}"#.into(),
    };
    assert!(d.on_event(&bad, &mut Vec::new()).is_err());
}

/// `parse_reply` (typed, as bytes) and `parse` (tree) give the same answer,
/// and what the typed path does not cover falls back to the tree.
#[test]
fn the_fast_reply_path_answers_what_the_tree_answers() {
    let plain = map(json!({"model": "m", "messages": []}));
    let json_mode =
        map(json!({"model": "m", "messages": [], "response_format": {"type": "json_object"}}));
    let bodies = [
        include_str!("fixtures/message_response.json").to_string(),
        include_str!("fixtures/tool_use_response.json").to_string(),
        json!({"id": "msg_é\u{1}", "type": "message", "model": "claude", "content": [{"type": "text", "text": "a"}, {"type": "thinking", "thinking": "x"}, {"type": "text", "text": "b \"q\""}],
            "stop_reason": "max_tokens", "usage": {"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 1}}).to_string(),
        // No id, no model, no usage, null stop reason.
        r#"{"type":"message","content":[],"stop_reason":null}"#.to_string(),
        // Usage as the API sends it now (nested members), null, or with
        // counts that are not whole numbers (the tree reads them as 0).
        r#"{"type":"message","content":[],"usage":{"input_tokens":4,"cache_creation":{"ephemeral_5m_input_tokens":2},"cache_creation_input_tokens":2,"server_tool_use":{"web_search_requests":0},"service_tier":"standard","output_tokens":9}}"#.to_string(),
        r#"{"type":"message","content":[],"usage":null}"#.to_string(),
        r#"{"type":"message","content":[],"usage":{"input_tokens":1.5,"output_tokens":-2,"cache_read_input_tokens":null}}"#.to_string(),
        // Shapes the typed path leaves to the tree.
        r#"{"type":"message","content":[{"type":"text","text":7}],"usage":{"input_tokens":1}}"#.to_string(),
        r#"{"type":"message","content":[{"type":1}],"usage":[1]}"#.to_string(),
        r#"{"type":"message","content":[],"usage":"none"}"#.to_string(),
        r#"{"type":"message","id":"a","id":"b","content":[]}"#.to_string(),
    ];
    for body in &bodies {
        for req in [&plain, &json_mode] {
            let tree = Anthropic.parse(Endpoint::Chat, "anthropic", req, body.as_bytes());
            let fast = Anthropic.parse_reply(
                Endpoint::Chat,
                "anthropic",
                &RequestBody::from_map(req.clone()),
                &bytes::Bytes::copy_from_slice(body.as_bytes()),
            );
            match (tree, fast) {
                (Ok((mut t, tu)), Ok((f, fu))) => {
                    let mut f = f.into_map();
                    assert!(t.remove("created").is_some() && f.remove("created").is_some());
                    assert_eq!(Value::Object(f), Value::Object(t), "{body}");
                    assert_eq!(fu, tu, "{body}");
                }
                (Err(t), Err(f)) => assert_eq!(f.to_string(), t.to_string(), "{body}"),
                (t, f) => panic!("{body}: tree {t:?}, fast {f:?}"),
            }
        }
    }
    // The common answer takes the typed path (kept as bytes).
    let (r, _) = Anthropic
        .parse_reply(
            Endpoint::Chat,
            "anthropic",
            &RequestBody::from_map(plain.clone()),
            &bytes::Bytes::from_static(include_str!("fixtures/message_response.json").as_bytes()),
        )
        .unwrap();
    assert!(matches!(r, Reply::Raw(_)));
}

#[test]
fn request_members_in_documented_order_and_part_errors_named() {
    let (sent, req) = build(json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": ""}, {"type": "refusal", "refusal": "no"}]},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "b"}],
        "stop": ["X", "Y"], "top_k": 5, "temperature": 0.0, "stream": true}))
    .unwrap();
    assert_eq!(
        sent,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 64000, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "no"}, {"type": "text", "text": "b"}]}],
            "temperature": 0.0, "top_k": 5, "stop_sequences": ["X", "Y"], "stream": true})
    );
    let text = std::str::from_utf8(&req.body).unwrap();
    let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
    assert!(at("model") < at("max_tokens") && at("max_tokens") < at("messages"));
    assert!(at("messages") < at("temperature") && at("stop_sequences") < at("stream"));
    assert!(text.starts_with("{\"model\":"), "{text}");
    assert!(!text.contains("\"system\"") && !text.contains("\"tools\""));

    let bad_url = json!({"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "data:image/png,xyz"}}]}]});
    let e = build(bad_url).unwrap_err();
    assert_eq!(
        e.param.as_deref(),
        Some("messages[1].content[1].image_url.url")
    );
    let bad_part =
        json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]});
    let e = build(bad_part).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
}

/// OpenAI's `file` parts become Anthropic's blocks: a PDF a base64
/// document titled with its file name (from a data URL, or bare base64
/// typed by the file name), plain text a text document, an image an image;
/// what Anthropic cannot read, and OpenAI file ids, are refused by name.
#[test]
fn files_become_documents_and_the_rest_is_refused_by_name() {
    let file = |f: Value| {
        json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Summarise"}, {"type": "file", "file": f}]}]})
    };
    let (sent, _) = build(file(
        json!({"filename": "q3.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}),
    ))
    .unwrap();
    assert_eq!(
        sent["messages"][0]["content"][1],
        json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}, "title": "q3.pdf"})
    );
    let (sent, _) = build(file(json!({"filename": "q3.PDF", "file_data": "JVBERi0x"}))).unwrap();
    assert_eq!(
        sent["messages"][0]["content"][1]["source"]["media_type"],
        "application/pdf"
    );
    // "hello, notes" in base64; no file name: no title.
    let (sent, _) = build(file(
        json!({"file_data": "data:text/plain;base64,aGVsbG8sIG5vdGVz"}),
    ))
    .unwrap();
    assert_eq!(
        sent["messages"][0]["content"][1],
        json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hello, notes"}})
    );
    let (sent, _) = build(file(
        json!({"file_data": "data:image/png;base64,iVBORw0KGgo="}),
    ))
    .unwrap();
    assert_eq!(
        sent["messages"][0]["content"][1],
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})
    );
    for (f, param) in [
        (
            json!({"file_id": "file-abc123"}),
            "messages[0].content[1].file.file_id",
        ),
        (
            json!({"filename": "a.docx", "file_data": "UEsDBA=="}),
            "messages[0].content[1].file.file_data",
        ),
        (
            json!({"file_data": "JVBERi0x"}),
            "messages[0].content[1].file.file_data",
        ),
        (
            json!({"file_data": "data:text/plain;base64,//8="}),
            "messages[0].content[1].file.file_data",
        ),
    ] {
        let e = build(file(f.clone())).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(param), "{f}");
        assert_eq!(e.status.as_u16(), 400);
    }
}

/// A participant's `name` and an image's `detail` have no place in
/// Anthropic's request: the answer comes without them, and the header says so.
#[test]
fn message_names_and_image_detail_are_dropped_and_named() {
    let (sent, req) = build(json!({"model": "m", "messages": [
        {"role": "system", "content": "s", "name": "policy"},
        {"role": "user", "content": [{"type": "text", "text": "a"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}}], "name": "ann"}]}))
    .unwrap();
    assert_eq!(
        req.dropped,
        ["messages[].name", "messages[].content[].image_url.detail"]
    );
    assert!(!sent.to_string().contains("ann") && !sent.to_string().contains("high"));
    // `detail: auto` asks for nothing, an empty name names no one.
    let (_, req) = build(
        json!({"model": "m", "messages": [{"role": "user", "name": "", "content": [
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "auto"}}]}]}),
    )
    .unwrap();
    assert!(req.dropped.is_empty(), "{:?}", req.dropped);
}

#[test]
fn reasoning_effort_becomes_extended_thinking() {
    let ask = |extra: Value| {
        let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "think"}]});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        build(v)
    };
    // Under the client's limit, which stays the limit.
    let (sent, _) =
        ask(json!({"reasoning_effort": "high", "max_completion_tokens": 3000})).unwrap();
    assert_eq!(
        sent["thinking"],
        json!({"type": "enabled", "budget_tokens": 2999})
    );
    assert_eq!(sent["max_tokens"], 3000);
    let (sent, _) = ask(json!({"reasoning_effort": "low", "max_tokens": 5000})).unwrap();
    assert_eq!(sent["thinking"]["budget_tokens"], 1024);
    assert_eq!(sent["max_tokens"], 5000);
    // Without a limit: the model's own, above the budget.
    let (sent, _) = ask(json!({"reasoning_effort": "medium"})).unwrap();
    assert_eq!(sent["thinking"]["budget_tokens"], 2048);
    assert_eq!(sent["max_tokens"], 64000);
    // none and minimal: no extended thinking.
    for effort in ["none", "minimal"] {
        let (sent, _) = ask(json!({"reasoning_effort": effort})).unwrap();
        assert!(sent.get("thinking").is_none(), "{effort}");
    }
    let (sent, _) = ask(json!({})).unwrap();
    assert!(sent.get("thinking").is_none());
    // Thinking takes temperature 1 only.
    let e = ask(json!({"reasoning_effort": "low", "temperature": 0.2})).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("temperature"));
    assert!(ask(json!({"reasoning_effort": "low", "temperature": 1})).is_ok());
    assert!(ask(json!({"reasoning_effort": "none", "temperature": 0.2})).is_ok());
    // What cannot be honoured is refused, naming the field.
    for bad in [
        json!({"reasoning_effort": "high", "max_completion_tokens": 1000}),
        json!({"reasoning_effort": "low", "response_format": {"type": "json_object"}}),
        json!({"reasoning_effort": "extreme"}),
        json!({"reasoning_effort": 3}),
    ] {
        let e = ask(bad.clone()).unwrap_err();
        assert_eq!(e.status.as_u16(), 400, "{bad}");
        assert_eq!(e.param.as_deref(), Some("reasoning_effort"), "{bad}");
    }
}

/// A generated body of the quick validation's shape: messages of the four
/// plain roles (empty, escaped and non-ASCII text among them) and a draw of
/// the scalar parameters, each given or not by the bits of `seed`.
fn quick_shaped(seed: u64) -> String {
    let mut bits = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
    let mut draw = |n: u64| {
        bits = bits
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (bits >> 33) % n
    };
    let roles = ["system", "developer", "user", "assistant"];
    let texts = [
        "",
        "Hello",
        "say \"hi\"\nthen stop",
        "caf\u{e9} \u{1F600}",
        "tab\there \\ slash",
    ];
    let messages: Vec<Value> = (0..1 + draw(5))
        .map(|_| {
            let mut m =
                json!({"role": roles[draw(4) as usize], "content": texts[draw(5) as usize]});
            if draw(4) == 0 {
                m["name"] = json!("ann");
            }
            m
        })
        .collect();
    let mut body = json!({"model": "claude-sonnet-4-5", "messages": messages});
    let params: [(&str, &[Value]); 12] = [
        ("temperature", &[json!(0.3), json!(1), json!(1.5), json!(0)]),
        ("top_p", &[json!(1), json!(0.5), json!(1e-1)]),
        ("max_tokens", &[json!(5), json!(300)]),
        ("max_completion_tokens", &[json!(7)]),
        ("n", &[json!(1), json!(2)]),
        ("seed", &[json!(3)]),
        ("presence_penalty", &[json!(0.5)]),
        ("frequency_penalty", &[json!(-0.5)]),
        ("logprobs", &[json!(true), json!(false)]),
        ("user", &[json!("u-\"1\""), json!("user-2")]),
        ("stream", &[json!(true), json!(false)]),
        ("parallel_tool_calls", &[json!(false)]),
    ];
    for (k, values) in params {
        if draw(3) == 0 {
            body[k] = values[draw(values.len() as u64) as usize].clone();
        }
    }
    if body["stream"] == json!(true) && draw(2) == 0 {
        body["stream_options"] = json!({"include_usage": true});
    }
    // Escapes written as \u sequences (serde_json writes them plainly).
    serde_json::to_string(&body)
        .unwrap()
        .replace("Hello", "H\\u0065llo")
}

/// The body read from its text (quick-validated bodies) writes exactly what
/// the tree writes, errors included, for every target setting.
#[test]
fn quick_bodies_translate_as_their_trees_do() {
    let a = auth();
    let mut quick = 0;
    for seed in 0..3000u64 {
        let text = quick_shaped(seed);
        let Some((_, shape)) = polyplex_types::validate::chat_quick(text.as_bytes()) else {
            continue;
        };
        quick += 1;
        let tree: JsonMap = serde_json::from_str(&text).unwrap();
        for (drop_params, default_max_tokens, vertex) in [
            (false, Some(64000), None),
            (true, None, None),
            (false, None, Some("vertex-2023-10-16")),
        ] {
            let t = Target {
                drop_params,
                default_max_tokens,
                ..target(&a)
            };
            let body = RequestBody::quick(bytes::Bytes::from(text.clone()), shape.clone());
            for stream in [false, true] {
                let fast = request::messages_body_of(&body, stream, &t, vertex);
                let slow = request::messages_body(&tree, stream, &t, vertex);
                match (fast, slow) {
                    (Ok(f), Ok(s)) => {
                        assert_eq!(
                            String::from_utf8(f.0).unwrap(),
                            String::from_utf8(s.0).unwrap(),
                            "{text}"
                        );
                        assert_eq!(f.1, s.1, "dropped, {text}");
                    }
                    (Err(f), Err(s)) => assert_eq!(format!("{f:?}"), format!("{s:?}"), "{text}"),
                    (f, s) => panic!(
                        "{text}: quick {:?}, tree {:?}",
                        f.map(|_| ()),
                        s.map(|_| ())
                    ),
                }
            }
            assert!(!body.has_tree(), "the tree was built for {text}");
            assert!(!request::json_mode_of(&body));
        }
    }
    assert!(quick > 1000, "only {quick} generated bodies were quick");
}

/// Bodies the quick validation does not take are read from their tree.
#[test]
fn other_bodies_are_read_from_the_tree() {
    let a = auth();
    let text = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"response_format":{"type":"json_object"}}"#;
    let body = RequestBody::parsed(
        bytes::Bytes::from_static(text.as_bytes()),
        serde_json::from_str(text).unwrap(),
    );
    let (sent, _) = request::messages_body_of(&body, false, &target(&a), None).unwrap();
    let sent: Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(sent["messages"][0]["content"][0]["text"], "hi");
    assert_eq!(sent["tool_choice"]["name"], JSON_TOOL);
    assert!(request::json_mode_of(&body));
}

/// The events read into typed fields when the upstream names them
/// (`message_start`, text `content_block_start`, `message_delta`, `ping`,
/// `content_block_stop`, `message_stop`) answer as the tree answers them
/// (unnamed events always take the tree), the unusual shapes included.
#[test]
fn named_events_read_without_a_tree_answer_as_the_tree() {
    let starts = [
        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"usage":{"input_tokens":14,"output_tokens":1,"cache_read_input_tokens":5,"cache_creation_input_tokens":2}}}"#,
        r#"{"type":"message_start","message":{"id":"msg_\u0032","model":"m","usage":null}}"#,
        r#"{"type":"message_start","message":{"model":"m"}}"#,
        r#"{"type":"message_start","message":{"id":"msg_3","model":"m","usage":{"input_tokens":1.5}}}"#,
        r#"{"type":"message_start","message":{"id":7,"model":"m","usage":{"input_tokens":3}}}"#,
    ];
    let middles: [&[(&str, &str)]; 3] = [
        &[
            ("ping", r#"{"type": "ping"}"#),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":"pre \"filled\""}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":2,"content_block":{"type":"thinking","thinking":""}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
            ),
        ],
        &[
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":7}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
        ],
        &[],
    ];
    let deltas = [
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"input_tokens":20,"cache_read_input_tokens":4,"output_tokens":9}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"input_tokens":null,"output_tokens":3}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":null},"usage":null}"#,
        r#"{"type":"message_delta","delta":null,"usage":{"output_tokens":2.5}}"#,
        r#"{"type":"message_delta","delta":"odd"}"#,
    ];
    let strip_created = |items: Vec<StreamItem>| -> Vec<Value> {
        items
            .into_iter()
            .map(|it| match it {
                StreamItem::Chunk(b) => {
                    let mut v: Value = serde_json::from_slice(&b).unwrap();
                    v["created"] = json!(0);
                    v
                }
                StreamItem::Usage(u, c) => {
                    let mut v = Value::Object(c.into_map());
                    v["created"] = json!(0);
                    json!({"usage": format!("{u:?}"), "chunk": v})
                }
                StreamItem::Done => json!("done"),
            })
            .collect()
    };
    let mut cases = 0;
    for start in starts {
        for middle in middles {
            for delta in deltas {
                let run = |named: bool| {
                    let mut d = Decoder::new("anthropic", false);
                    let mut out = Vec::new();
                    let mut events = vec![("message_start", start)];
                    events.extend_from_slice(middle);
                    events.push(("message_delta", delta));
                    events.push(("message_stop", r#"{"type":"message_stop"}"#));
                    for (name, data) in events {
                        let ev = crate::sse::Event {
                            event: named.then(|| name.to_string()),
                            data: data.to_string(),
                        };
                        d.on_event(&ev, &mut out).unwrap();
                    }
                    d.finish(&mut out).unwrap();
                    (
                        strip_created(out),
                        d.summary().completion_text,
                        d.saw_usage(),
                    )
                };
                assert_eq!(run(true), run(false), "{start} {middle:?} {delta}");
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 90);
    // Not JSON is an error on either path.
    for named in [Some("message_stop".to_string()), None] {
        let ev = crate::sse::Event {
            event: named,
            data: "{not json".into(),
        };
        assert!(Decoder::new("anthropic", false)
            .on_event(&ev, &mut Vec::new())
            .is_err());
    }
}

/// `cache_control` (a prompt-cache breakpoint, in OpenAI's shape as LiteLLM
/// and OpenRouter take it) reaches Anthropic where the client put it: on a
/// content part, on a whole message (its last block), on a tool; a system
/// prompt with one is sent as text blocks. Without one, the system prompt
/// stays one text.
#[test]
fn cache_breakpoints_reach_anthropic_where_the_client_put_them() {
    let eph = json!({"type": "ephemeral"});
    let hour = json!({"type": "ephemeral", "ttl": "1h"});
    let (sent, req) = build(json!({"model": "m",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}, "cache_control": hour}],
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "rules"}, {"type": "text", "text": "long context", "cache_control": eph}]},
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}, "cache_control": eph}]},
            {"role": "assistant", "content": "ok", "cache_control": eph},
            {"role": "user", "content": "b"}]}))
    .unwrap();
    assert!(req.dropped.is_empty(), "{:?}", req.dropped);
    assert_eq!(
        sent["system"],
        json!([{"type": "text", "text": "rules"}, {"type": "text", "text": "long context", "cache_control": eph},
            {"type": "text", "text": "be brief"}])
    );
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "a"},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}, "cache_control": eph}]},
            {"role": "assistant", "content": [{"type": "text", "text": "ok", "cache_control": eph}]},
            {"role": "user", "content": [{"type": "text", "text": "b"}]}])
    );
    assert_eq!(sent["tools"][0]["cache_control"], hour);
    // A whole system message marked: its one block carries the mark.
    let (sent, _) = build(json!({"model": "m", "messages": [
        {"role": "system", "content": "s", "cache_control": eph}, {"role": "user", "content": "q"}]}))
    .unwrap();
    assert_eq!(
        sent["system"],
        json!([{"type": "text", "text": "s", "cache_control": eph}])
    );
    // Unmarked: one text, as before.
    let (sent, _) = build(json!({"model": "m", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "s1"}, {"type": "text", "text": "s2"}]},
        {"role": "developer", "content": "d"}, {"role": "user", "content": "q"}]}))
    .unwrap();
    assert_eq!(sent["system"], json!("s1\ns2\n\nd"));
}

/// Extended thinking in a stream: its text as `reasoning_content` deltas,
/// each block whole (signature, or redacted data) as `thinking_blocks` once
/// it ends, wherever the bytes split; the answer's text as usual.
#[test]
fn thinking_streams_as_reasoning_and_blocks() {
    for split in [1, 7, 4096] {
        let (chunks, usage, _) = decode(include_str!("fixtures/stream_thinking.txt"), false, split);
        let delta = |k: &str| -> Vec<Value> {
            chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"].get(k).cloned())
                .collect()
        };
        let reasoning: String = delta("reasoning_content")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            reasoning,
            "Let me solve this step by step:\n\n1. First break down 27 * 453\n2. 453 = 400 + 50 + 3"
        );
        let blocks: Vec<Value> = delta("thinking_blocks")
            .into_iter()
            .flat_map(|b| b.as_array().unwrap().clone())
            .collect();
        assert_eq!(
            blocks,
            [
                json!({"type": "thinking", "thinking": reasoning, "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"}),
                json!({"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"}),
            ],
            "split {split}"
        );
        let text: String = delta("content").iter().filter_map(Value::as_str).collect();
        assert_eq!(text, "27 * 453 = 12,231");
        assert_eq!(usage.unwrap().0.completion_tokens, 210);
    }
}

/// A unary answer's thinking: `reasoning_content` and `thinking_blocks` on
/// the message; sent back on the assistant turn, the blocks lead it
/// verbatim. A tool turn sent back without them cannot have thinking on
/// (Anthropic refuses it): `reasoning_effort` is dropped and named.
#[test]
fn thinking_comes_back_and_goes_out_verbatim() {
    let body = br#"{"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [
        {"type": "thinking", "thinking": "Paris, so call the tool.", "signature": "sig-1"},
        {"type": "redacted_thinking", "data": "enc-2"},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 20}}"#;
    assert!(response::parse_fast(body, false).is_none());
    let (m, _) = response::parse("anthropic", body, false).unwrap();
    let msg = &m["choices"][0]["message"];
    assert_eq!(msg["reasoning_content"], "Paris, so call the tool.");
    let blocks = msg["thinking_blocks"].clone();
    assert_eq!(
        blocks,
        json!([{"type": "thinking", "thinking": "Paris, so call the tool.", "signature": "sig-1"},
            {"type": "redacted_thinking", "data": "enc-2"}])
    );
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let turn = |with_blocks: bool| {
        let mut assistant = json!({"role": "assistant", "content": null, "reasoning_content": "Paris, so call the tool.",
            "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]});
        if with_blocks {
            assistant["thinking_blocks"] = blocks.clone();
        }
        json!({"model": "m", "tools": tools, "reasoning_effort": "low", "max_completion_tokens": 4000, "messages": [
            {"role": "user", "content": "Weather in Paris?"}, assistant,
            {"role": "tool", "tool_call_id": "toolu_1", "content": "22 C"}]})
    };
    let (sent, req) = build(turn(true)).unwrap();
    assert!(req.dropped.is_empty(), "{:?}", req.dropped);
    assert_eq!(sent["thinking"]["type"], "enabled");
    let content = &sent["messages"][1]["content"];
    assert_eq!(content[0], blocks[0]);
    assert_eq!(content[1], blocks[1]);
    assert_eq!(content[2]["type"], "tool_use");
    let (sent, req) = build(turn(false)).unwrap();
    assert_eq!(req.dropped, ["reasoning_effort"]);
    assert!(sent.get("thinking").is_none());
    assert_eq!(sent["messages"][1]["content"][0]["type"], "tool_use");
    // Thinking off for this request: the blocks stay out (Anthropic refuses
    // thinking in the final assistant turn without it).
    let mut off = turn(true);
    off.as_object_mut().unwrap().remove("reasoning_effort");
    let (sent, req) = build(off).unwrap();
    assert!(req.dropped.is_empty());
    assert!(sent.get("thinking").is_none());
    assert_eq!(sent["messages"][1]["content"][0]["type"], "tool_use");
}

#[test]
fn web_search_options_become_the_web_search_tool() {
    let msgs = json!([{"role": "user", "content": "weather?"}]);
    let (sent, _) =
        build(json!({"model": "m", "messages": msgs, "web_search_options": {}})).unwrap();
    assert_eq!(
        sent["tools"],
        json!([{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}])
    );
    let (sent, _) = build(json!({"model": "m", "messages": msgs,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "web_search_options": {"search_context_size": "low", "user_location": {"type": "approximate",
            "approximate": {"city": "Paris", "country": "FR", "region": null}}}}))
    .unwrap();
    assert_eq!(sent["tools"][0]["name"], "f");
    assert_eq!(
        sent["tools"][1],
        json!({"type": "web_search_20250305", "name": "web_search", "max_uses": 1,
            "user_location": {"type": "approximate", "city": "Paris", "country": "FR"}})
    );
    let (sent, _) = build(json!({"model": "m", "messages": msgs,
        "web_search_options": {"search_context_size": "high"}}))
    .unwrap();
    assert_eq!(sent["tools"][0]["max_uses"], 10);
    // The forced JSON tool leaves no turn to search in.
    let e = build(
        json!({"model": "m", "messages": msgs, "web_search_options": {},
        "response_format": {"type": "json_object"}}),
    )
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("web_search_options"));
}

#[test]
fn cited_answers_come_back_with_url_citations() {
    let body = json!({"id": "msg_ws", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [
            {"type": "text", "text": "I'll check. "},
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "weather NYC"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [
                {"type": "web_search_result", "url": "https://weather.example/nyc", "title": "Weather", "encrypted_content": "x"}]},
            {"type": "text", "text": "It is sunny, 5°C.", "citations": [
                {"type": "web_search_result_location", "url": "https://weather.example/nyc", "title": "Weather",
                    "encrypted_index": "y", "cited_text": "Sunny"},
                {"type": "web_search_result_location", "url": "https://weather.example/nyc", "title": "Weather",
                    "encrypted_index": "z", "cited_text": "5°C"}]}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 100, "output_tokens": 20, "server_tool_use": {"web_search_requests": 1}}})
    .to_string();
    // Not the fast path's: citations take the tree.
    assert!(response::parse_fast(body.as_bytes(), false).is_none());
    let (out, usage) = Anthropic
        .parse(
            Endpoint::Chat,
            "anthropic",
            &JsonMap::new(),
            body.as_bytes(),
        )
        .unwrap();
    let m = &out["choices"][0]["message"];
    assert_eq!(m["content"], "I'll check. It is sunny, 5°C.");
    assert!(m.get("tool_calls").is_none());
    assert_eq!(
        m["annotations"],
        json!([{"type": "url_citation", "url_citation": {"start_index": 12, "end_index": 29,
            "url": "https://weather.example/nyc", "title": "Weather"}}])
    );
    assert_eq!(usage.unwrap().web_searches, 1);
    assert_eq!(out["usage"]["server_tool_use"]["web_search_requests"], 1);
}

#[test]
fn a_searching_stream_passes_the_search_and_annotates_the_cited_text() {
    for split in [1, 7, 4096] {
        let (chunks, usage, _) = decode_with(
            Decoder::new("anthropic", false).searching(true),
            include_str!("fixtures/stream_web_search.txt"),
            split,
        );
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "I'll check. It is sunny, 5°C.");
        // The search's query is not a tool call of the client's.
        assert!(chunks
            .iter()
            .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()));
        let annotations: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"].get("annotations"))
            .collect();
        assert_eq!(
            annotations,
            vec![
                &json!([{"type": "url_citation", "url_citation": {"start_index": 12, "end_index": 29,
                "url": "https://weather.example/nyc", "title": "Weather in New York City"}}])
            ]
        );
        assert_eq!(
            usage.map(|(u, _)| (u.completion_tokens, u.web_searches)),
            Some((510, 1))
        );
    }
    // A decoder not told of the search still passes its blocks unharmed.
    let (chunks, usage, _) = decode(include_str!("fixtures/stream_web_search.txt"), false, 4096);
    assert!(chunks
        .iter()
        .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()));
    assert_eq!(usage.unwrap().0.web_searches, 1);
}
