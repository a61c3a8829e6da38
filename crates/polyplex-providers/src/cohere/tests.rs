use super::*;
use crate::sse::Parser;
use crate::AuthStyle;

fn target(a: &AuthStyle) -> Target<'_> {
    Target {
        provider: "cohere",
        base_url: "https://api.cohere.com",
        api_key: Some("co-key"),
        credential: None,
        auth: a,
        model: "command-a-03-2025",
        extra_headers: &[],
        stream_usage: true,
        default_max_tokens: None,
        drop_params: false,
        api_version: None,
        sigv4: None,
    }
}

fn map(v: Value) -> JsonMap {
    v.as_object().unwrap().clone()
}

#[test]
fn request_translation() {
    let a = AuthStyle::bearer();
    let tools = json!([{"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "b", "parameters": {"type": "object"}}}]);
    let body = map(json!({
        "model": "cohere/command-a-03-2025",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "b", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}
        ],
        "tools": tools, "tool_choice": {"type": "function", "function": {"name": "b"}},
        "temperature": 0.3, "top_p": 0.9, "stop": "END", "max_tokens": 50, "seed": 3,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}, "user": "u"
    }));
    let req = Cohere
        .build(Endpoint::Chat, &body, true, &target(&a))
        .unwrap();
    assert_eq!(req.url, "https://api.cohere.com/v2/chat");
    assert_eq!(req.headers["authorization"], "Bearer co-key");
    assert_eq!(req.dropped, vec!["user"]);
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        sent,
        json!({
            "model": "command-a-03-2025",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "b", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"}
            ],
            "tool_choice": "REQUIRED",
            "tools": [{"type": "function", "function": {"name": "b", "parameters": {"type": "object"}}}],
            "temperature": 0.3, "p": 0.9, "seed": 3, "max_tokens": 50, "stop_sequences": ["END"],
            "response_format": {"type": "json_object", "json_schema": {"type": "object"}}, "stream": true
        })
    );
    for (k, v) in [
        ("n", json!(2)),
        ("logit_bias", json!({"1": 1})),
        ("top_logprobs", json!(2)),
        ("parallel_tool_calls", json!(false)),
        ("odd", json!(1)),
    ] {
        let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        b[k] = v;
        assert_eq!(
            Cohere
                .build(Endpoint::Chat, &map(b), false, &target(&a))
                .unwrap_err()
                .param
                .as_deref(),
            Some(k)
        );
    }
}

/// A chat answer as the adapter reads it.
fn parse_chat_answer(body: &[u8]) -> (JsonMap, Option<polyplex_types::Usage>) {
    Cohere
        .parse(Endpoint::Chat, "cohere", &JsonMap::new(), body)
        .unwrap()
}

/// A chat stream decoder for the Cohere model the stream tests use.
fn chat_decoder() -> Box<dyn StreamDecoder> {
    Cohere.stream_decoder(
        Endpoint::Chat,
        "cohere",
        "command-a-03-2025",
        &RequestBody::from_map(JsonMap::new()),
    )
}

#[test]
fn responses_translate_with_billed_usage() {
    let (out, usage) = parse_chat_answer(include_bytes!("fixtures/response_text.json"));
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "LLMs are models trained on text."
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
        Some((17, 9))
    );
    let (out, _) = parse_chat_answer(include_bytes!("fixtures/response_tool_call.json"));
    let m = &out["choices"][0]["message"];
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert!(m["content"].is_null());
    assert_eq!(m["tool_calls"][0]["id"], "get_weather_1byjy32y4hvq");
    assert_eq!(
        m["tool_calls"][0]["function"]["arguments"],
        "{\"location\":\"Toronto\"}"
    );
    let e = Cohere
        .parse(
            Endpoint::Chat,
            "cohere",
            &JsonMap::new(),
            br#"{"id":"x","finish_reason":"ERROR","message":{"role":"assistant"}}"#,
        )
        .unwrap_err();
    assert!(e.retryable);
    let e = Cohere.error(
        "cohere",
        StatusCode::TOO_MANY_REQUESTS,
        br#"{"message":"You are using a Trial key, which is limited to 10 API calls / minute."}"#,
    );
    assert_eq!((e.status.as_u16(), e.retryable), (429, true));
    assert!(e.message.starts_with("You are using a Trial key"));
}

fn decode(t: &str, split: usize) -> (Vec<Value>, Vec<StreamItem>) {
    let mut p = Parser::new();
    let mut events = Vec::new();
    for piece in t.as_bytes().chunks(split) {
        p.feed(piece, &mut events);
    }
    let mut d = chat_decoder();
    let mut items = Vec::new();
    for ev in &events {
        d.on_event(ev, &mut items).unwrap();
    }
    d.finish(&mut items).unwrap();
    let chunks = items
        .iter()
        .filter_map(|i| match i {
            StreamItem::Chunk(b) => Some(serde_json::from_slice(b).unwrap()),
            _ => None,
        })
        .collect();
    (chunks, items)
}

#[test]
fn streams_translate() {
    for split in [1, 13, 4096] {
        let (chunks, items) = decode(include_str!("fixtures/stream_text.txt"), split);
        assert!(chunks
            .iter()
            .all(|c| c["id"] == "d8b0a5c5-6d2c-4d4f-8a57-8e0c7a1b2c3d"
                && c["model"] == "command-a-03-2025"));
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello world");
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
        assert!(matches!(&items[items.len() - 2], StreamItem::Usage(u, _) if u.prompt_tokens == 3));
        assert_eq!(items.last(), Some(&StreamItem::Done));
    }
    let (chunks, _) = decode(include_str!("fixtures/stream_tool_call.txt"), 7);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["id"], "get_weather_nsz5zm3w56q3");
    let args: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"location": "Toronto"})
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

/// `content-delta` events are read into borrowed fields; every shape gives
/// the chunk the general (tree) path gives — named by `event:` or only by
/// `type`, escaped text, missing levels, and shapes the typed read refuses
/// (a text or a type that is not a string), which fall back.
#[test]
fn content_deltas_read_without_a_tree_answer_as_the_tree() {
    let deltas = [
        r#"{"type":"content-delta","index":0,"delta":{"message":{"content":{"text":"Hi \"there\"\n\u00e9"}}}}"#,
        r#"{"type":"content-delta","index":0,"delta":{"message":{}}}"#,
        r#"{"type":"content-delta","index":0}"#,
        r#"{"type":"content-delta","delta":{"message":{"content":{"text":7}}}}"#,
        r#"{"type":"content-delta","delta":{"message":{"content":[{"text":"array"}]}}}"#,
        r#"{"type":1,"delta":{"message":{"content":{"text":"typed by event"}}}}"#,
        r#"{"delta":{"message":{"content":{"text":"x"}}},"type":"content-delta","more":[1]}"#,
    ];
    let start = r#"{"type":"message-start","id":"m1","delta":{"message":{"role":"assistant"}}}"#;
    let run = |named: bool| {
        let mut d = chat_decoder();
        let mut out = Vec::new();
        let ev = |name: &str, data: &str| crate::sse::Event {
            event: named.then(|| name.to_string()),
            data: data.to_string(),
        };
        d.on_event(&ev("message-start", start), &mut out).unwrap();
        for data in deltas {
            d.on_event(&ev("content-delta", data), &mut out).unwrap();
        }
        (out, d.summary().completion_text)
    };
    // What the tree path gives, written out.
    let texts = [
        "Hi \"there\"\n\u{e9}",
        "",
        "",
        "",
        "",
        "typed by event",
        "x",
    ];
    let (named, named_text) = run(true);
    assert_eq!(named_text, texts.concat());
    let contents: Vec<String> = named[1..]
        .iter()
        .map(|i| match i {
            StreamItem::Chunk(b) => {
                let c: Value = serde_json::from_slice(b).unwrap();
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
            other => panic!("not a chunk: {other:?}"),
        })
        .collect();
    assert_eq!(contents, texts);
    // Without `event:` lines the one typed only by the event name is not a
    // delta (its `type` is not a string, and no event name says so).
    let (unnamed, unnamed_text) = run(false);
    assert_eq!(unnamed.len(), named.len() - 1);
    assert_eq!(unnamed_text, texts.concat().replace("typed by event", ""));
}

/// Cohere takes text and images (with `detail`) as OpenAI sends them, a
/// refusal part as text; audio and files are refused by name, and a
/// participant's `name` is dropped and named.
#[test]
fn content_parts_cohere_takes_and_refuses() {
    let a = AuthStyle::bearer();
    let body = map(json!({"model": "m", "messages": [
        {"role": "user", "name": "ann", "content": [{"type": "text", "text": "Look"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        {"role": "user", "content": "please"}]}));
    let req = Cohere
        .build(Endpoint::Chat, &body, false, &target(&a))
        .unwrap();
    assert_eq!(req.dropped, ["messages[].name"]);
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Look"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "no"}]},
            {"role": "user", "content": "please"}])
    );
    for part in [
        json!({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}),
        json!({"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x"}}),
    ] {
        let body = map(
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, part]}]}),
        );
        let e = Cohere
            .build(Endpoint::Chat, &body, false, &target(&a))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[1].type"));
    }
}

/// Cohere has no breakpoints: `cache_control` on a message, a part or a
/// tool is taken out of what is sent, and named.
#[test]
fn cache_breakpoints_are_taken_out_and_named() {
    let a = AuthStyle::bearer();
    let eph = json!({"type": "ephemeral"});
    let body = map(json!({"model": "m",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}, "cache_control": eph}],
        "messages": [
            {"role": "system", "content": "rules", "cache_control": eph},
            {"role": "user", "content": [{"type": "text", "text": "q", "cache_control": eph}]}]}));
    let req = Cohere
        .build(Endpoint::Chat, &body, false, &target(&a))
        .unwrap();
    assert_eq!(req.dropped, ["cache_control"]);
    assert!(!String::from_utf8_lossy(&req.body).contains("cache_control"));
}

/// `logprobs`: asked of Cohere as its own flag; each scored text chunk it
/// gives back (unary: the answer's list; streamed: on its `content-delta`)
/// is one entry of OpenAI's `logprobs.content`, its log probability its
/// tokens' summed, without alternatives (`top_logprobs` is refused above).
#[test]
fn log_probabilities_of_the_chosen_text() {
    let a = AuthStyle::bearer();
    let sent = |logprobs: bool| -> Value {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "logprobs": logprobs});
        let req = Cohere
            .build(Endpoint::Chat, &map(body), false, &target(&a))
            .unwrap();
        serde_json::from_slice(&req.body).unwrap()
    };
    assert_eq!(sent(true)["logprobs"], json!(true));
    assert!(sent(false).get("logprobs").is_none());

    let answer = json!({"id": "r1", "finish_reason": "COMPLETE",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "Hello world"}]},
        "logprobs": [{"token_ids": [1], "text": "Hello", "logprobs": [-0.5]},
                     {"token_ids": [2, 3], "text": " world", "logprobs": [-0.25, -0.125]}]});
    let (out, _) = parse_chat_answer(answer.to_string().as_bytes());
    let content = &out["choices"][0]["logprobs"]["content"];
    assert_eq!(content[0]["token"], "Hello");
    assert_eq!(content[0]["logprob"], json!(-0.5));
    assert_eq!(content[1]["logprob"], json!(-0.375));
    assert_eq!(content[1]["bytes"], json!(" world".as_bytes()));
    assert_eq!(content[1]["top_logprobs"], json!([]));
    let (out, _) = parse_chat_answer(include_bytes!("fixtures/response_text.json"));
    assert!(out["choices"][0]["logprobs"].is_null());

    let stream = concat!(
        "event: message-start\ndata: {\"id\":\"s1\",\"type\":\"message-start\",\"delta\":{\"message\":{\"role\":\"assistant\"}}}\n\n",
        "event: content-delta\ndata: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"text\":\"Hi\"}}},\"logprobs\":{\"token_ids\":[7],\"text\":\"Hi\",\"logprobs\":[-0.75]}}\n\n",
        "event: message-end\ndata: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"COMPLETE\",\"usage\":{\"billed_units\":{\"input_tokens\":1,\"output_tokens\":1}}}}\n\n",
    );
    let (chunks, _) = decode(stream, 4096);
    let scored: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["choices"][0]["logprobs"].is_null())
        .collect();
    assert_eq!(scored.len(), 1);
    assert_eq!(scored[0]["choices"][0]["delta"]["content"], "Hi");
    assert_eq!(
        scored[0]["choices"][0]["logprobs"]["content"][0],
        json!({"token": "Hi", "logprob": -0.75, "bytes": [72, 105], "top_logprobs": []})
    );
}
