use super::*;
use crate::sse::Parser;
use crate::{AuthStyle, StreamItem};
use http::HeaderMap;

fn target<'a>(a: &'a AuthStyle, sigv4: Option<&'a SigV4>) -> Target<'a> {
    Target {
        provider: "bedrock",
        base_url: "https://bedrock-runtime.us-east-1.amazonaws.com",
        api_key: if sigv4.is_some() {
            None
        } else {
            Some("bedrock-api-key")
        },
        credential: None,
        auth: a,
        model: "anthropic.claude-3-5-haiku-20241022-v1:0",
        extra_headers: &[],
        stream_usage: true,
        default_max_tokens: Some(8192),
        drop_params: false,
        api_version: None,
        sigv4,
    }
}

fn map(v: Value) -> JsonMap {
    v.as_object().unwrap().clone()
}

#[test]
fn request_translation() {
    let a = AuthStyle::bearer();
    let body = map(json!({
        "model": "bedrock/anthropic.claude-3-5-haiku-20241022-v1:0",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}, {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}]},
            {"role": "user", "content": "In Boston."},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "tooluse_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Boston\"}"}}]},
            {"role": "tool", "tool_call_id": "tooluse_1", "content": "22 C"},
            {"role": "tool", "tool_call_id": "tooluse_2", "content": ""}
        ],
        "temperature": 0.3, "top_p": 0.8, "max_completion_tokens": 100, "stop": ["END", "STOP"], "top_k": 5,
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}},
                  {"type": "function", "function": {"name": "now"}}],
        "tool_choice": "required", "user": "u1", "stream_options": {"include_usage": true}
    }));
    let req = Bedrock
        .build(Endpoint::Chat, &body, true, &target(&a, None))
        .unwrap();
    assert_eq!(
        req.url,
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream"
    );
    assert_eq!(req.headers["authorization"], "Bearer bedrock-api-key");
    assert_eq!(req.headers["accept"], "application/vnd.amazon.eventstream");
    assert_eq!(req.dropped, vec!["user"]);
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        sent,
        json!({
            "messages": [
                {"role": "user", "content": [{"text": "Weather?"}, {"image": {"format": "jpeg", "source": {"bytes": "AAAA"}}}, {"text": "In Boston."}]},
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"location": "Boston"}}}]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "22 C"}]}},
                    {"toolResult": {"toolUseId": "tooluse_2", "content": [{"json": {}}]}}
                ]}
            ],
            "system": [{"text": "Be brief."}, {"text": "Use metric units."}],
            "inferenceConfig": {"maxTokens": 100, "temperature": 0.3, "topP": 0.8, "stopSequences": ["END", "STOP"]},
            "additionalModelRequestFields": {"top_k": 5},
            "toolConfig": {
                "tools": [
                    {"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object", "properties": {"location": {"type": "string"}}}}, "description": "d"}},
                    {"toolSpec": {"name": "now", "inputSchema": {"json": {"type": "object", "properties": {}}}}}
                ],
                "toolChoice": {"any": {}}
            }
        })
    );
    // Unary: the other path; a named tool choice; an ARN is one path segment.
    let mut t = target(&a, None);
    t.model = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.amazon.nova-pro-v1:0";
    let mut b = body.clone();
    b.insert(
        "tool_choice".into(),
        json!({"type": "function", "function": {"name": "now"}}),
    );
    b.remove("top_k");
    let req = Bedrock.build(Endpoint::Chat, &b, false, &t).unwrap();
    assert_eq!(req.url, "https://bedrock-runtime.us-east-1.amazonaws.com/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.amazon.nova-pro-v1%3A0/converse");
    assert_eq!(req.headers["accept"], "application/json");
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        sent["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "now"}})
    );
}

#[test]
fn refusals_name_the_parameter() {
    let a = AuthStyle::bearer();
    let t = target(&a, None);
    let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let refused = |extra: Value| {
        let mut b = map(base.clone());
        for (k, v) in extra.as_object().unwrap() {
            b.insert(k.clone(), v.clone());
        }
        Bedrock
            .build(Endpoint::Chat, &b, false, &t)
            .unwrap_err()
            .param
    };
    assert_eq!(refused(json!({"seed": 1})).as_deref(), Some("seed"));
    assert_eq!(refused(json!({"n": 2})).as_deref(), Some("n"));
    assert_eq!(
        refused(json!({"logprobs": true})).as_deref(),
        Some("logprobs")
    );
    assert_eq!(
        refused(json!({"frequency_penalty": 0.5})).as_deref(),
        Some("frequency_penalty")
    );
    assert_eq!(
        refused(json!({"frobnicate": 1})).as_deref(),
        Some("frobnicate")
    );
    assert_eq!(
        refused(json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]})).as_deref(),
        Some("messages[0].content[0].image_url.url")
    );
    assert_eq!(
        refused(json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AA"}}]}]})).as_deref(),
        Some("messages[0].content[0].image_url.url")
    );
    assert_eq!(
        refused(json!({"response_format": {"type": "json_object"}, "tools": [{"type": "function", "function": {"name": "x"}}]})).as_deref(),
        Some("response_format")
    );
    // top_k reaches only the models known to read it.
    let mut t2 = target(&a, None);
    t2.model = "amazon.nova-pro-v1:0";
    let mut b = map(base.clone());
    b.insert("top_k".into(), json!(3));
    assert_eq!(
        Bedrock
            .build(Endpoint::Chat, &b, false, &t2)
            .unwrap_err()
            .param
            .as_deref(),
        Some("top_k")
    );
    // tool_choice "none": the tools are left out...
    let mut b = map(base.clone());
    b.insert(
        "tools".into(),
        json!([{"type": "function", "function": {"name": "x"}}]),
    );
    b.insert("tool_choice".into(), json!("none"));
    let req = Bedrock.build(Endpoint::Chat, &b, false, &t).unwrap();
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    assert!(sent.get("toolConfig").is_none());
    // ... which Converse refuses once a turn carries tool use: named.
    b.insert("messages".into(), json!([{"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "x", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "ok"}]));
    let e = Bedrock.build(Endpoint::Chat, &b, false, &t).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("tool_choice"));
    // Under drop_params: dropped and named.
    let mut t3 = target(&a, None);
    t3.drop_params = true;
    let mut b = map(base.clone());
    b.insert("seed".into(), json!(1));
    b.insert("presence_penalty".into(), json!(0.1));
    let req = Bedrock.build(Endpoint::Chat, &b, false, &t3).unwrap();
    assert_eq!(req.dropped, vec!["seed", "presence_penalty"]);
    // Embeddings: only the model families Bedrock's invoke bodies are known for.
    assert_eq!(
        Bedrock
            .build(Endpoint::Embeddings, &map(json!({"input": "x"})), false, &t)
            .unwrap_err()
            .param
            .as_deref(),
        Some("model")
    );
    // Completions are not offered.
    assert_eq!(
        Bedrock
            .build(
                Endpoint::Completions,
                &map(json!({"prompt": "x"})),
                false,
                &t
            )
            .unwrap_err()
            .code
            .as_deref(),
        Some("unsupported_endpoint")
    );
}

#[test]
fn sigv4_signed_requests_verify() {
    let a = AuthStyle::bearer();
    let s = SigV4::new("us-east-1", "AKIDEXAMPLE", "wJalrXUtnFEMI", None);
    let body = map(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
    let req = Bedrock
        .build(Endpoint::Chat, &body, false, &target(&a, Some(&s)))
        .unwrap();
    let auth = req.headers["authorization"].to_str().unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
        "{auth}"
    );
    assert!(req.headers.contains_key("x-amz-date"));
    let secret = |id: &str| (id == "AKIDEXAMPLE").then(|| "wJalrXUtnFEMI".to_string());
    assert_eq!(
        sigv4::verify(
            &req.url,
            &req.headers,
            &req.body,
            secret,
            std::time::SystemTime::now()
        )
        .unwrap(),
        "AKIDEXAMPLE"
    );
}

#[test]
fn region_and_endpoint() {
    assert_eq!(
        endpoint_for("eu-central-1"),
        "https://bedrock-runtime.eu-central-1.amazonaws.com"
    );
    assert_eq!(
        region_of("https://bedrock-runtime.eu-central-1.amazonaws.com/").as_deref(),
        Some("eu-central-1")
    );
    assert_eq!(
        region_of("https://bedrock-runtime-fips.us-gov-west-1.amazonaws.com").as_deref(),
        Some("us-gov-west-1")
    );
    assert_eq!(region_of("http://127.0.0.1:9000"), None);
    assert_eq!(region_of("https://example.com"), None);
}

// From the Converse API reference's example answer.
const CONVERSE_REPLY: &str = r#"{"output":{"message":{"role":"assistant","content":[{"text":"Here is a list of 3 pop songs."}]}},"stopReason":"end_turn","usage":{"inputTokens":125,"outputTokens":60,"totalTokens":185},"metrics":{"latencyMs":1175}}"#;

#[test]
fn replies_translate() {
    let (out, usage) = Bedrock
        .parse(
            Endpoint::Chat,
            "bedrock",
            &JsonMap::new(),
            CONVERSE_REPLY.as_bytes(),
        )
        .unwrap();
    assert!(out["id"].as_str().unwrap().starts_with("chatcmpl-bedrock-"));
    assert!(
        !out.contains_key("model"),
        "the gateway fills in the model it called"
    );
    assert_eq!(out["object"], "chat.completion");
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "Here is a list of 3 pop songs."
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    let u = usage.unwrap();
    assert_eq!((u.prompt_tokens, u.completion_tokens), (125, 60));
    assert_eq!(out["usage"]["total_tokens"], 185);

    let tool = br#"{"output":{"message":{"role":"assistant","content":[{"text":"Let me look."},{"toolUse":{"toolUseId":"tooluse_kZJMlvQmRJ6eAyJE5GIl7Q","name":"top_song","input":{"sign":"WZPZ"}}}]}},"stopReason":"tool_use","usage":{"inputTokens":375,"outputTokens":94,"totalTokens":469,"cacheReadInputTokens":100,"cacheWriteInputTokens":20}}"#;
    let (out, usage) = Bedrock
        .parse(Endpoint::Chat, "bedrock", &JsonMap::new(), tool)
        .unwrap();
    let m = &out["choices"][0]["message"];
    assert_eq!(m["tool_calls"][0]["id"], "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q");
    assert_eq!(
        m["tool_calls"][0]["function"]["arguments"],
        "{\"sign\":\"WZPZ\"}"
    );
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    let u = usage.unwrap();
    assert_eq!((u.prompt_tokens, u.cached_tokens), (495, 100));

    // JSON mode: the forced tool's input is the content.
    let req = map(json!({"response_format": {"type": "json_object"}}));
    let j = br#"{"output":{"message":{"role":"assistant","content":[{"toolUse":{"toolUseId":"t","name":"json_response","input":{"a":1}}}]}},"stopReason":"tool_use","usage":{"inputTokens":1,"outputTokens":2,"totalTokens":3}}"#;
    let (out, _) = Bedrock.parse(Endpoint::Chat, "bedrock", &req, j).unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], "{\"a\":1}");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");

    for (stop, fr) in [
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ] {
        let b = CONVERSE_REPLY.replace("end_turn", stop);
        let (out, _) = Bedrock
            .parse(Endpoint::Chat, "bedrock", &JsonMap::new(), b.as_bytes())
            .unwrap();
        assert_eq!(out["choices"][0]["finish_reason"], fr, "{stop}");
    }
    assert!(Bedrock
        .parse(
            Endpoint::Chat,
            "bedrock",
            &JsonMap::new(),
            b"{\"output\":{}}"
        )
        .is_err());
}

#[test]
fn errors_map_by_type() {
    let mut h = HeaderMap::new();
    let mut check = |kind: &str, status: u16, body: &str, want: u16, code: &str| {
        h.insert("x-amzn-errortype", kind.parse().unwrap());
        let e = Bedrock.error_with_headers(
            "bedrock",
            StatusCode::from_u16(status).unwrap(),
            &h,
            body.as_bytes(),
        );
        assert_eq!(e.status.as_u16(), want, "{kind}");
        assert_eq!(e.code.as_deref(), Some(code), "{kind}");
        e
    };
    let e = check(
        "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/",
        400,
        r#"{"message":"The model returned the following errors: messages: roles must alternate"}"#,
        400,
        "validation",
    );
    assert!(e.message.contains("roles must alternate"));
    assert!(!e.retryable);
    let e = check(
        "ThrottlingException",
        429,
        r#"{"message":"Too many requests, please wait before trying again."}"#,
        429,
        "throttling",
    );
    assert!(e.retryable);
    check(
        "AccessDeniedException",
        403,
        r#"{"Message":"User is not authorized"}"#,
        403,
        "access_denied",
    );
    check(
        "ResourceNotFoundException",
        404,
        r#"{"message":"Model not found"}"#,
        404,
        "resource_not_found",
    );
    let e = check(
        "ModelErrorException",
        424,
        r#"{"message":"The model failed"}"#,
        502,
        "model_error",
    );
    assert!(e.retryable);
    check(
        "ServiceUnavailableException",
        503,
        r#"{"message":"busy"}"#,
        503,
        "service_unavailable",
    );
    check(
        "ModelTimeoutException",
        408,
        r#"{"message":"slow"}"#,
        504,
        "model_timeout",
    );
    // Without the header: the status decides.
    let e = Bedrock.error(
        "bedrock",
        StatusCode::TOO_MANY_REQUESTS,
        b"{\"message\":\"slow down\"}",
    );
    assert_eq!(e.status.as_u16(), 429);
    assert_eq!(e.message, "slow down");
}

fn decode_all(frames: &[Bytes], split: usize, json_mode: bool) -> Result<Vec<Value>, GatewayError> {
    let whole: Vec<u8> = frames.concat();
    let mut p = Parser::event_stream();
    let mut d = Decoder::new("bedrock", "anthropic.claude", json_mode);
    let mut events = Vec::new();
    let mut items = Vec::new();
    for piece in whole.chunks(split.max(1)) {
        p.feed(piece, &mut events);
        for ev in events.drain(..) {
            d.on_event(&ev, &mut items)?;
        }
    }
    assert!(!p.has_partial());
    d.finish(&mut items)?;
    Ok(items
        .into_iter()
        .map(|i| match i {
            StreamItem::Chunk(b) => serde_json::from_slice(&b).unwrap(),
            StreamItem::Usage(u, _) => {
                json!({"usage": u.prompt_tokens * 1000 + u.completion_tokens})
            }
            StreamItem::Done => json!("DONE"),
        })
        .collect())
}

fn text_stream() -> Vec<Bytes> {
    vec![
        frame(
            "messageStart",
            &json!({"p": "abcd", "role": "assistant"}),
            false,
        ),
        frame(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}, "p": "abcdefgh"}),
            false,
        ),
        frame(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"text": "lo ✓"}, "p": "ab"}),
            false,
        ),
        frame(
            "contentBlockStop",
            &json!({"contentBlockIndex": 0, "p": "abc"}),
            false,
        ),
        frame(
            "messageStop",
            &json!({"p": "abcdef", "stopReason": "end_turn"}),
            false,
        ),
        frame(
            "metadata",
            &json!({"metrics": {"latencyMs": 380}, "p": "abcdefghijk", "usage": {"inputTokens": 12, "outputTokens": 3, "totalTokens": 15}}),
            false,
        ),
    ]
}

#[test]
fn streams_translate_wherever_the_bytes_split() {
    let frames = text_stream();
    let whole = decode_all(&frames, usize::MAX, false).unwrap();
    assert_eq!(whole.len(), 6);
    assert_eq!(
        whole[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(whole[1]["choices"][0]["delta"]["content"], "Hel");
    assert_eq!(whole[2]["choices"][0]["delta"]["content"], "lo ✓");
    assert_eq!(whole[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(whole[3]["model"], "anthropic.claude");
    assert_eq!(whole[4], json!({"usage": 12003}));
    assert_eq!(whole[5], json!("DONE"));
    let strip = |v: Vec<Value>| -> Vec<Value> {
        v.into_iter()
            .map(|mut c| {
                if let Some(o) = c.as_object_mut() {
                    o.remove("id");
                    o.remove("created");
                }
                c
            })
            .collect()
    };
    let whole = strip(whole);
    for split in [1, 2, 3, 7, 13, 64] {
        assert_eq!(
            strip(decode_all(&frames, split, false).unwrap()),
            whole,
            "split {split}"
        );
    }
}

#[test]
fn tool_use_streams() {
    let frames = vec![
        frame("messageStart", &json!({"role": "assistant"}), false),
        frame(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"text": "Checking."}}),
            false,
        ),
        frame("contentBlockStop", &json!({"contentBlockIndex": 0}), false),
        frame(
            "contentBlockStart",
            &json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_abc", "name": "top_song"}}}),
            false,
        ),
        frame(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"sign\":"}}}),
            false,
        ),
        frame(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"WZPZ\"}"}}}),
            false,
        ),
        frame("contentBlockStop", &json!({"contentBlockIndex": 1}), false),
        frame("messageStop", &json!({"stopReason": "tool_use"}), false),
        frame(
            "metadata",
            &json!({"usage": {"inputTokens": 5, "outputTokens": 7, "totalTokens": 12}}),
            false,
        ),
    ];
    let out = decode_all(&frames, 5, false).unwrap();
    assert_eq!(
        out[2]["choices"][0]["delta"]["tool_calls"][0],
        json!({"index": 0, "id": "tooluse_abc", "type": "function", "function": {"name": "top_song", "arguments": ""}})
    );
    assert_eq!(
        out[3]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
        "{\"sign\":"
    );
    assert_eq!(
        out[4]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
        "\"WZPZ\"}"
    );
    assert_eq!(out[5]["choices"][0]["finish_reason"], "tool_calls");
    // JSON mode: the forced tool's input streams as content.
    let frames = vec![
        frame("messageStart", &json!({"role": "assistant"}), false),
        frame(
            "contentBlockStart",
            &json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t", "name": "json_response"}}}),
            false,
        ),
        frame(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{\"a\":1}"}}}),
            false,
        ),
        frame("messageStop", &json!({"stopReason": "tool_use"}), false),
    ];
    let out = decode_all(&frames, 1000, true).unwrap();
    assert_eq!(out[1]["choices"][0]["delta"]["content"], "{\"a\":1}");
    assert_eq!(out[2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(out[3], json!("DONE"));
}

#[test]
fn stream_failures_say_why() {
    // An exception message mid-stream: its type decides the error.
    let mut frames = text_stream();
    frames.truncate(2);
    frames.push(frame(
        "throttlingException",
        &json!({"message": "Too many tokens, please wait before trying again."}),
        true,
    ));
    let e = decode_all(&frames, 4, false).unwrap_err();
    assert_eq!(e.status.as_u16(), 429);
    assert!(e.retryable);
    assert!(e.message.contains("Too many tokens"));
    let mut frames = text_stream();
    frames.truncate(1);
    frames.push(frame(
        "modelStreamErrorException",
        &json!({"message": "boom", "originalStatusCode": 500}),
        true,
    ));
    let e = decode_all(&frames, 4, false).unwrap_err();
    assert_eq!(e.status.as_u16(), 502);
    assert_eq!(e.code.as_deref(), Some("model_stream_error"));
    // A frame cut anywhere is known to be unfinished (even with only its
    // prelude taken by the decoder).
    let all: Vec<u8> = text_stream().concat();
    for cut in 1..all.len() {
        let mut p = Parser::event_stream();
        let mut events = Vec::new();
        p.feed(&all[..cut], &mut events);
        let at_boundary = text_stream()
            .iter()
            .scan(0, |n, f| {
                *n += f.len();
                Some(*n)
            })
            .any(|n| n == cut);
        assert_eq!(p.has_partial(), !at_boundary, "cut at {cut}");
    }
    // Ended before messageStop.
    let mut frames = text_stream();
    frames.truncate(3);
    assert!(decode_all(&frames, 100, false)
        .unwrap_err()
        .message
        .contains("before messageStop"));
    // A corrupted frame (CRC mismatch): an error, and nothing after it.
    let mut frames = text_stream();
    let mut bad = frames[1].to_vec();
    let n = bad.len();
    bad[n - 6] ^= 0x55;
    frames[1] = Bytes::from(bad);
    let e = decode_all(&frames, 100, false).unwrap_err();
    assert!(e.message.contains("does not decode"), "{}", e.message);
}

#[test]
fn embeddings_by_model_family() {
    let a = AuthStyle::bearer();
    let mut t = target(&a, None);
    // Cohere: a batch, float embeddings, the dimension if asked.
    t.model = "cohere.embed-v4:0";
    let req = Bedrock
        .build(
            Endpoint::Embeddings,
            &map(json!({"model": "m", "input": ["a", "b"], "dimensions": 256})),
            false,
            &t,
        )
        .unwrap();
    assert_eq!(
        req.url,
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/cohere.embed-v4%3A0/invoke"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&req.body).unwrap(),
        json!({"texts": ["a", "b"], "input_type": "search_document", "embedding_types": ["float"], "output_dimension": 256})
    );
    let reply = br#"{"id":"e1","texts":["a","b"],"embeddings":{"float":[[0.5,0.25],[1.0,-1.0]]},"response_type":"embeddings_by_type"}"#;
    let (out, usage) = Bedrock
        .parse(Endpoint::Embeddings, "bedrock", &JsonMap::new(), reply)
        .unwrap();
    assert_eq!(out["data"][1]["embedding"], json!([1.0, -1.0]));
    assert!(usage.is_none(), "the gateway counts Cohere's tokens");
    let (out, _) = Bedrock
        .parse(
            Endpoint::Embeddings,
            "bedrock",
            &JsonMap::new(),
            br#"{"embeddings":[[0.5]],"response_type":"embeddings_floats"}"#,
        )
        .unwrap();
    assert_eq!(out["data"][0]["embedding"], json!([0.5]));
    // Titan: one text, its token count.
    t.model = "amazon.titan-embed-text-v2:0";
    let req = Bedrock
        .build(
            Endpoint::Embeddings,
            &map(json!({"model": "m", "input": "hello", "dimensions": 512})),
            false,
            &t,
        )
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&req.body).unwrap(),
        json!({"inputText": "hello", "dimensions": 512})
    );
    let (out, usage) = Bedrock
        .parse(
            Endpoint::Embeddings,
            "bedrock",
            &JsonMap::new(),
            br#"{"embedding":[0.1,0.2],"inputTextTokenCount":3}"#,
        )
        .unwrap();
    assert_eq!(out["data"][0]["embedding"], json!([0.1, 0.2]));
    assert_eq!(usage.unwrap().prompt_tokens, 3);
    let e = Bedrock
        .build(
            Endpoint::Embeddings,
            &map(json!({"model": "m", "input": ["a", "b"]})),
            false,
            &t,
        )
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("input"));
}

/// `contentBlockDelta` events are read into borrowed fields; every shape
/// gives what the general (tree) path gives, including shapes the typed
/// read refuses (an index or a text of the wrong type), which fall back.
#[test]
fn delta_events_read_without_a_tree_answer_as_the_tree() {
    let tool = r#"{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"t1","name":"f"}}}"#;
    let deltas = [
        r#"{"contentBlockIndex":0,"delta":{"text":"Hi \"there\"\n\u00e9"}}"#,
        r#"{"delta":{"text":"no index"}}"#,
        r#"{"contentBlockIndex":0,"delta":{"text":null}}"#,
        r#"{"contentBlockIndex":0,"delta":{"text":7}}"#,
        r#"{"contentBlockIndex":"0","delta":{"text":"odd index"}}"#,
        r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"hmm"}}}"#,
        r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\"a\": 1"}},"p":"x"}"#,
        r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"}"}}}"#,
    ];
    let run = |via_tree: bool| {
        let mut d = Decoder::new("bedrock", "anthropic.claude", false);
        let mut out = Vec::new();
        let ev = |name: &str, data: &str| crate::sse::Event {
            event: Some(name.to_string()),
            data: data.to_string(),
        };
        d.on_event(&ev("messageStart", r#"{"role":"assistant"}"#), &mut out)
            .unwrap();
        d.on_event(&ev("contentBlockStart", tool), &mut out)
            .unwrap();
        for data in deltas {
            if via_tree {
                let v: Value = serde_json::from_str(data).unwrap();
                let idx = v["contentBlockIndex"].as_u64().unwrap_or(0);
                if let Some(rc) = v["delta"].get("reasoningContent") {
                    d.on_reasoning(idx, rc, &mut out);
                    continue;
                }
                d.on_delta(
                    v["contentBlockIndex"].as_u64().unwrap_or(0),
                    v["delta"]["text"].as_str(),
                    v.pointer("/delta/toolUse/input").and_then(Value::as_str),
                    &mut out,
                )
                .unwrap();
            } else {
                d.on_event(&ev("contentBlockDelta", data), &mut out)
                    .unwrap();
            }
        }
        (out, d.summary().completion_text)
    };
    // Each decoder makes its own chunk id: compared without it.
    let without_id = |items: Vec<StreamItem>| -> Vec<Value> {
        items
            .into_iter()
            .map(|i| match i {
                StreamItem::Chunk(b) => {
                    let mut c: Value = serde_json::from_slice(&b).unwrap();
                    c["id"] = Value::Null;
                    c
                }
                other => panic!("not a chunk: {other:?}"),
            })
            .collect()
    };
    let (tree, tree_text) = run(true);
    assert_eq!(
        tree_text,
        "fHi \"there\"\n\u{e9}no indexodd index{\"a\": 1}"
    );
    let (typed, text) = run(false);
    assert_eq!(without_id(typed), without_id(tree));
    assert_eq!(text, tree_text);
}

/// OpenAI's `file` parts become Converse `document` blocks of the format
/// their media type names (images: `image` blocks), each named as Converse
/// allows — from the file name, in its characters, unique in the request;
/// what Converse cannot read (audio, other types, OpenAI file ids) is
/// refused by name.
#[test]
fn files_become_named_documents() {
    let a = AuthStyle::bearer();
    let pdf = json!({"type": "file", "file": {"filename": "Q3 report: final.v2.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}});
    let accented = json!({"type": "file", "file": {"filename": "résumé.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}});
    let body = map(json!({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, pdf, pdf,
            {"type": "file", "file": {"file_data": "data:text/csv;base64,YSxi"}},
            {"type": "file", "file": {"filename": "t.xlsx", "file_data": "UEsDBA=="}},
            {"type": "file", "file": {"filename": "p.png", "file_data": "iVBORw0KGgo="}}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "file", "file": {"filename": "  ", "file_data": "data:text/plain;base64,aGk="}}, accented]}]}));
    let req = Bedrock
        .build(Endpoint::Chat, &body, false, &target(&a, None))
        .unwrap();
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    let doc = |format: &str, name: &str, bytes: &str| json!({"document": {"format": format, "name": name, "source": {"bytes": bytes}}});
    assert_eq!(
        sent["messages"][0]["content"],
        json!([{"text": "Compare"},
            doc("pdf", "Q3 report- final-v2", "JVBERi0x"),
            doc("pdf", "Q3 report- final-v2 (2)", "JVBERi0x"),
            doc("csv", "document", "YSxi"),
            doc("xlsx", "t", "UEsDBA=="),
            {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}])
    );
    assert_eq!(
        sent["messages"][2]["content"],
        json!([
            doc("txt", "document (2)", "aGk="),
            doc("pdf", "r-sum-", "JVBERi0x")
        ])
    );
    for (part, param) in [
        (
            json!({"type": "file", "file": {"file_id": "file-1"}}),
            "messages[0].content[0].file.file_id",
        ),
        (
            json!({"type": "file", "file": {"file_data": "data:application/zip;base64,UEs="}}),
            "messages[0].content[0].file.file_data",
        ),
        (
            json!({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}),
            "messages[0].content[0].type",
        ),
    ] {
        let body = map(json!({"model": "m", "messages": [{"role": "user", "content": [part]}]}));
        let e = Bedrock
            .build(Endpoint::Chat, &body, false, &target(&a, None))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some(param), "{part}");
    }
}

/// `cache_control` becomes Converse's `cachePoint` after the marked block:
/// in the system blocks, the messages (a part, or a whole message's last
/// block) and the tools.
#[test]
fn cache_breakpoints_become_cache_points() {
    let a = AuthStyle::bearer();
    let eph = json!({"type": "ephemeral"});
    let point = json!({"cachePoint": {"type": "default"}});
    let body = map(json!({"model": "m",
        "tools": [{"type": "function", "function": {"name": "f"}, "cache_control": eph}, {"type": "function", "function": {"name": "g"}}],
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "rules", "cache_control": eph}, {"type": "text", "text": "more"}]},
            {"role": "system", "content": "tail", "cache_control": eph},
            {"role": "user", "content": [{"type": "text", "text": "a", "cache_control": eph}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "ok", "cache_control": eph},
            {"role": "user", "content": "c"}]}));
    let req = Bedrock
        .build(Endpoint::Chat, &body, false, &target(&a, None))
        .unwrap();
    assert!(req.dropped.is_empty(), "{:?}", req.dropped);
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        sent["system"],
        json!([{"text": "rules"}, point, {"text": "more"}, {"text": "tail"}, point])
    );
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": [{"text": "a"}, point, {"text": "b"}]},
            {"role": "assistant", "content": [{"text": "ok"}, point]},
            {"role": "user", "content": [{"text": "c"}]}])
    );
    let tools = &sent["toolConfig"]["tools"];
    assert_eq!(tools[0]["toolSpec"]["name"], "f");
    assert_eq!(tools[1], point);
    assert_eq!(tools[2]["toolSpec"]["name"], "g");
}

/// `reasoning_effort` on Bedrock's Claude: extended thinking in the model's
/// own fields, under the client's limit; the answer's reasoning as
/// `reasoning_content` and `thinking_blocks` (as Anthropic's), sent back
/// as `reasoningContent` blocks leading the assistant turn; a tool turn
/// sent back without them gets no thinking, named. Other models: refused.
#[test]
fn claude_thinking_on_bedrock() {
    let a = AuthStyle::bearer();
    let t = target(&a, None);
    let build = |v: Value| {
        let req = Bedrock.build(Endpoint::Chat, &map(v), false, &t).unwrap();
        (
            serde_json::from_slice::<Value>(&req.body).unwrap(),
            req.dropped,
        )
    };
    let (sent, _) = build(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "reasoning_effort": "medium", "max_completion_tokens": 3000, "top_k": 5}),
    );
    assert_eq!(
        sent["additionalModelRequestFields"],
        json!({"thinking": {"type": "enabled", "budget_tokens": 2048}, "top_k": 5})
    );
    let (sent, _) = build(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "high"}),
    );
    assert!(sent["inferenceConfig"]["maxTokens"].as_u64().unwrap() > 4096);
    let answer = br#"{"output": {"message": {"role": "assistant", "content": [
        {"reasoningContent": {"reasoningText": {"text": "Call the tool.", "signature": "sig-1"}}},
        {"reasoningContent": {"redactedContent": "ZW5j"}},
        {"toolUse": {"toolUseId": "tooluse_1", "name": "f", "input": {}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 9, "totalTokens": 14}}"#;
    let (m, _) = Bedrock
        .parse(Endpoint::Chat, "bedrock", &JsonMap::new(), answer)
        .unwrap();
    let msg = &m["choices"][0]["message"];
    assert_eq!(msg["reasoning_content"], "Call the tool.");
    let blocks = msg["thinking_blocks"].clone();
    assert_eq!(
        blocks,
        json!([{"type": "thinking", "thinking": "Call the tool.", "signature": "sig-1"},
            {"type": "redacted_thinking", "data": "ZW5j"}])
    );
    let turn = |with: bool| {
        let mut assistant = json!({"role": "assistant", "content": null,
            "tool_calls": [{"id": "tooluse_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]});
        if with {
            assistant["thinking_blocks"] = blocks.clone();
        }
        json!({"model": "m", "reasoning_effort": "low", "max_completion_tokens": 2000,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [{"role": "user", "content": "go"}, assistant, {"role": "tool", "tool_call_id": "tooluse_1", "content": "ok"}]})
    };
    let (sent, dropped) = build(turn(true));
    assert!(dropped.is_empty(), "{dropped:?}");
    assert_eq!(
        sent["messages"][1]["content"],
        json!([{"reasoningContent": {"reasoningText": {"text": "Call the tool.", "signature": "sig-1"}}},
            {"reasoningContent": {"redactedContent": "ZW5j"}},
            {"toolUse": {"toolUseId": "tooluse_1", "name": "f", "input": {}}}])
    );
    let (sent, dropped) = build(turn(false));
    assert_eq!(dropped, ["reasoning_effort"]);
    assert!(sent.get("additionalModelRequestFields").is_none());
    let nova = Target {
        model: "amazon.nova-pro-v1:0",
        ..target(&a, None)
    };
    let body = map(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "low"}),
    );
    let e = Bedrock
        .build(Endpoint::Chat, &body, false, &nova)
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("reasoning_effort"));
}

#[test]
fn claude_takes_a_clients_messages_request_through_invoke() {
    use base64::Engine;
    let a = AuthStyle::bearer();
    let t = target(&a, None);
    assert!(Bedrock.carries_messages(t.model, false));
    assert!(Bedrock.carries_messages(t.model, true));
    assert!(!Bedrock.carries_messages("amazon.nova-pro-v1:0", false));
    let body = br#"{"model":"claude","stream":true,"max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    let native = crate::anthropic::Native::new(Bytes::from_static(body), &HeaderMap::new());
    let req = Bedrock
        .messages_request(&native, crate::MessagesCall::Create { stream: true }, &t)
        .unwrap();
    assert!(req.url.ends_with(
        "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke-with-response-stream"
    ));
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(sent["anthropic_version"], ANTHROPIC_VERSION);
    assert!(sent.get("model").is_none() && sent.get("stream").is_none());

    // Each chunk's bytes are one of Anthropic's events; an exception is its error.
    let event = r#"{"type":"message_stop"}"#;
    let b64 = base64::engine::general_purpose::STANDARD.encode(event);
    let mut wire = frame("chunk", &json!({"bytes": b64}), false).to_vec();
    wire.extend_from_slice(&frame(
        "throttlingException",
        &json!({"message": "Too many tokens"}),
        true,
    ));
    let mut events = Vec::new();
    Parser::event_stream().feed(&wire, &mut events);
    let first = Bedrock.messages_event("aws", events[0].clone()).unwrap();
    assert_eq!(first.event.as_deref(), Some("message_stop"));
    assert_eq!(first.data, event);
    let e = Bedrock
        .messages_event("aws", events[1].clone())
        .unwrap_err();
    assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(e.retryable && e.message.contains("Too many tokens"));
}

#[test]
fn claude_is_counted_by_count_tokens_for_its_foundation_model() {
    use base64::Engine;
    let a = AuthStyle::bearer();
    let mut t = target(&a, None);
    t.model = "us.anthropic.claude-haiku-4-5-20251001-v1:0";
    let body = br#"{"model":"claude","messages":[{"role":"user","content":"hi"}]}"#;
    let mut headers = HeaderMap::new();
    headers.insert("anthropic-beta", "b1".parse().unwrap());
    let native = crate::anthropic::Native::new(Bytes::from_static(body), &headers);
    let req = Bedrock
        .messages_request(&native, crate::MessagesCall::Count, &t)
        .unwrap();
    assert!(req
        .url
        .ends_with("/model/anthropic.claude-haiku-4-5-20251001-v1%3A0/count-tokens"));
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    let inner = base64::engine::general_purpose::STANDARD
        .decode(sent["input"]["invokeModel"]["body"].as_str().unwrap())
        .unwrap();
    let inner: Value = serde_json::from_slice(&inner).unwrap();
    assert_eq!(inner["anthropic_version"], ANTHROPIC_VERSION);
    assert_eq!(
        (inner["max_tokens"].as_u64(), inner.get("model")),
        (Some(1), None)
    );
    assert_eq!(inner["anthropic_beta"], json!(["b1"]));
    let answer = Bedrock
        .messages_count_answer("aws", Bytes::from_static(br#"{"inputTokens":42}"#))
        .unwrap();
    assert_eq!(&answer[..], br#"{"input_tokens":42}"#);
    assert!(Bedrock
        .messages_count_answer("aws", Bytes::from_static(b"{}"))
        .is_err());
    assert_eq!(
        foundation_model("eu.anthropic.claude-x-v1:0"),
        "anthropic.claude-x-v1:0"
    );
    assert_eq!(
        foundation_model("anthropic.claude-x-v1:0"),
        "anthropic.claude-x-v1:0"
    );
    assert_eq!(
        foundation_model("amazon.nova-pro-v1:0"),
        "amazon.nova-pro-v1:0"
    );
}
