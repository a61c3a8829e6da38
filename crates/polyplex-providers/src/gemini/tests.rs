use super::*;
use crate::sse::Parser;
use crate::AuthStyle;
use http::HeaderName;

fn auth() -> AuthStyle {
    AuthStyle {
        header: HeaderName::from_static("x-goog-api-key"),
        prefix: String::new(),
    }
}

fn target(a: &AuthStyle) -> Target<'_> {
    Target {
        provider: "google",
        base_url: "https://generativelanguage.googleapis.com",
        api_key: Some("g-key"),
        credential: None,
        auth: a,
        model: "gemini-2.5-flash",
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
    let a = auth();
    let body = map(json!({
        "model": "google/gemini-2.5-flash",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Boston\"}"}}]},
            {"role": "tool", "tool_call_id": "call_9", "content": "{\"temp\": 22}"},
            {"role": "tool", "tool_call_id": "call_9", "content": "sunny"}
        ],
        "temperature": 0.3, "top_p": 0.8, "n": 2, "seed": 5, "max_tokens": 100, "stop": "END", "presence_penalty": 0.1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "user": "u1"
    }));
    let req = Gemini
        .build(Endpoint::Chat, &body, false, &target(&a))
        .unwrap();
    assert_eq!(
        req.url,
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(req.headers["x-goog-api-key"], "g-key");
    assert_eq!(req.dropped, vec!["user"]);
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        sent,
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "Weather?"}, {"inline_data": {"mime_type": "image/png", "data": "AAAA"}}]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Boston"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 22}}},
                    {"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}]}
            ],
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "generationConfig": {"temperature": 0.3, "topP": 0.8, "seed": 5, "presencePenalty": 0.1, "candidateCount": 2,
                "maxOutputTokens": 100, "stopSequences": ["END"], "responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}},
            "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "d", "parametersJsonSchema": {"type": "object"}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
        })
    );
    let req = Gemini
        .build(Endpoint::Chat, &body, true, &target(&a))
        .unwrap();
    assert!(req.url.ends_with(":streamGenerateContent?alt=sse"));
}

#[test]
fn unsupported_and_unknown_tool_ids() {
    let a = auth();
    for (k, v) in [
        ("logit_bias", json!({"1": 1})),
        ("parallel_tool_calls", json!(false)),
        ("mystery", json!(1)),
    ] {
        let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        b[k] = v;
        let e = Gemini
            .build(Endpoint::Chat, &map(b), false, &target(&a))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some(k));
    }
    let b = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "nope", "content": "x"}]});
    let e = Gemini
        .build(Endpoint::Chat, &map(b), false, &target(&a))
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages[1].tool_call_id"));
}

#[test]
fn responses_translate() {
    let (out, usage) = Gemini
        .parse(
            Endpoint::Chat,
            "google",
            &JsonMap::new(),
            include_bytes!("fixtures/response_text.json"),
        )
        .unwrap();
    assert_eq!(out["id"], "chatcmpl-mAitaLmkHPPlz7IPvtfUqQ4");
    assert_eq!(out["model"], "gemini-2.5-flash");
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "AI learns patterns from data."
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    let u = usage.unwrap();
    assert_eq!(
        (
            u.prompt_tokens,
            u.completion_tokens,
            u.reasoning_tokens,
            u.cached_tokens
        ),
        (8, 17, 10, 4)
    );

    let (out, _) = Gemini
        .parse(
            Endpoint::Chat,
            "google",
            &JsonMap::new(),
            include_bytes!("fixtures/response_function_call.json"),
        )
        .unwrap();
    let m = &out["choices"][0]["message"];
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert!(m["content"].is_null());
    assert!(m["tool_calls"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("call_"));
    assert_eq!(
        m["tool_calls"][0]["function"]["arguments"],
        "{\"location\":\"Boston\"}"
    );
    // Ids are stable for the same response.
    let (again, _) = Gemini
        .parse(
            Endpoint::Chat,
            "google",
            &JsonMap::new(),
            include_bytes!("fixtures/response_function_call.json"),
        )
        .unwrap();
    assert_eq!(
        again["choices"][0]["message"]["tool_calls"][0]["id"],
        m["tool_calls"][0]["id"]
    );

    let e = Gemini.error("google", StatusCode::TOO_MANY_REQUESTS, br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#);
    assert_eq!(
        (e.status.as_u16(), e.retryable, e.code.as_deref()),
        (429, true, Some("resource_exhausted"))
    );
    assert!(e.message.starts_with("Resource has been exhausted"));
    let e = Gemini
        .parse(
            Endpoint::Chat,
            "google",
            &JsonMap::new(),
            br#"{"promptFeedback":{"blockReason":"SAFETY"}}"#,
        )
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("content_filter"));
}

#[test]
fn stream_translates_and_ends_on_close() {
    for split in [1, 11, 4096] {
        let mut p = Parser::new();
        let mut events = Vec::new();
        for piece in include_bytes!("fixtures/stream_text.txt").chunks(split) {
            p.feed(piece, &mut events);
        }
        let mut d = Decoder {
            provider: "google".into(),
            ..Decoder::default()
        };
        let mut items = Vec::new();
        for ev in &events {
            d.on_event(ev, &mut items).unwrap();
        }
        d.finish(&mut items).unwrap();
        assert_eq!(items.last(), Some(&StreamItem::Done));
        let chunks: Vec<Value> = items
            .iter()
            .filter_map(|i| match i {
                StreamItem::Chunk(b) => Some(serde_json::from_slice(b).unwrap()),
                _ => None,
            })
            .collect();
        assert!(chunks
            .iter()
            .all(|c| c["id"] == "chatcmpl-str-1" && c["model"] == "gemini-2.5-flash"));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "The quick fox.");
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
        let usage = items.iter().find_map(|i| match i {
            StreamItem::Usage(u, _) => Some(*u),
            _ => None,
        });
        assert_eq!(
            usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((9, 4))
        );
    }
    // Closed before a finishReason: truncated.
    let mut d = Decoder {
        provider: "google".into(),
        ..Decoder::default()
    };
    let mut p = Parser::new();
    let mut events = Vec::new();
    p.feed(
        include_str!("fixtures/stream_text.txt")
            .split("\n\n")
            .next()
            .unwrap()
            .as_bytes(),
        &mut events,
    );
    p.feed(b"\n\n", &mut events);
    let mut items = Vec::new();
    d.on_event(&events[0], &mut items).unwrap();
    assert!(d.finish(&mut items).is_err());
}

#[test]
fn reasoning_effort_becomes_a_thinking_budget() {
    let a = auth();
    let sent = |effort: Value| -> Result<Value, GatewayError> {
        let body = map(
            json!({"model": "m", "messages": [{"role": "user", "content": "think"}], "reasoning_effort": effort}),
        );
        let req = Gemini.build(Endpoint::Chat, &body, false, &target(&a))?;
        Ok(serde_json::from_slice(&req.body).unwrap())
    };
    for (effort, budget) in [
        ("none", 0),
        ("minimal", 0),
        ("low", 1024),
        ("medium", 8192),
        ("high", 24576),
    ] {
        // Thinking's summary is asked for whenever there is thinking.
        let config = if budget > 0 {
            json!({"thinkingBudget": budget, "includeThoughts": true})
        } else {
            json!({"thinkingBudget": budget})
        };
        assert_eq!(
            sent(json!(effort)).unwrap()["generationConfig"]["thinkingConfig"],
            config,
            "{effort}"
        );
    }
    assert!(sent(Value::Null).unwrap().get("generationConfig").is_none());
    let e = sent(json!("max")).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("reasoning_effort"));
}

/// Text-only stream events are read into borrowed fields; every one gives
/// what the tree gives: text split over parts, thoughts as reasoning, several
/// candidates, `usageMetadata` (even `null`), a finish, and events the typed
/// read leaves to the tree (a function call, an error, odd types).
#[test]
fn text_events_read_without_a_tree_answer_as_the_tree() {
    let events = [
        r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"index":0}],"responseId":"r1","modelVersion":"gemini-2.5-flash"}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":" \"there\"\n"},{"text":"\u00e9"}],"role":"model"},"index":0}]}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":"hmm","thought":true},{"text":"!"}]}}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2}}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":"a"}]},"index":0},{"content":{"parts":[{"text":"b"}]},"index":1}]}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":7}]}}]}"#,
        r#"{"candidates":[{"index":"0","content":{"parts":[{"text":"odd index"}]}}]}"#,
        r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"x":1}}}]},"index":0}]}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":"say \"error\""}]}}],"usageMetadata":null}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":"c"}]},"index":0}],"usageMetadata":{"promptTokenCount":4,"cachedContentTokenCount":2,"candidatesTokenCount":1,"promptTokensDetails":[{"modality":"TEXT","tokenCount":4}]}}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":"d"}]},"index":0}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":1.5}}"#,
        r#"{"candidates":[{"content":{"parts":[]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":5,"thoughtsTokenCount":1}}"#,
    ];
    let run = |via_tree: bool| {
        let mut d = Decoder {
            provider: "gemini".into(),
            ..Decoder::default()
        };
        let mut out = Vec::new();
        for data in events {
            let ev = crate::sse::Event {
                event: None,
                data: data.to_string(),
            };
            if via_tree {
                d.on_tree(&ev, &mut out).unwrap();
            } else {
                d.on_event(&ev, &mut out).unwrap();
            }
            // Each step's usage as the decoder holds it.
            out.push(StreamItem::Usage(
                d.usage.unwrap_or_default(),
                crate::Reply::Map(JsonMap::new()),
            ));
        }
        d.finish(&mut out).unwrap();
        let text = d.summary().completion_text;
        // `created` is the decoder's clock: compared without it.
        let items: Vec<Value> = out
            .into_iter()
            .map(|i| match i {
                StreamItem::Chunk(b) => {
                    let mut c: Value = serde_json::from_slice(&b).unwrap();
                    c["created"] = Value::Null;
                    c
                }
                StreamItem::Usage(u, _) => {
                    json!([u.prompt_tokens, u.completion_tokens, u.reasoning_tokens])
                }
                StreamItem::Done => json!("done"),
            })
            .collect();
        (items, text)
    };
    let (tree, tree_text) = run(true);
    assert_eq!(
        tree_text,
        "Hi \"there\"\n\u{e9}!abodd index{\"x\":1}say \"error\"cd"
    );
    let (typed, text) = run(false);
    assert_eq!(typed, tree);
    assert_eq!(text, tree_text);
    // Which events the typed read took (the first always goes to the tree).
    let mut d = Decoder {
        started: true,
        ..Decoder::default()
    };
    let took: Vec<bool> = events
        .iter()
        .map(|e| d.on_text_event(e, &mut Vec::new()).is_some())
        .collect();
    assert_eq!(
        took,
        [true, true, true, true, false, false, false, true, true, false, true]
    );
}

/// OpenAI's `file` and `input_audio` parts reach Gemini as `inline_data`
/// of their media type; a participant's `name` and an image's `detail`
/// are dropped and named; an OpenAI file id is refused by name.
#[test]
fn files_and_audio_become_inline_data() {
    let a = auth();
    let body = map(
        json!({"model": "m", "messages": [{"role": "user", "name": "ann", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "file", "file": {"filename": "q3.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}},
        {"type": "file", "file": {"filename": "notes.md", "file_data": "IyBoaQ=="}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "input_audio", "input_audio": {"data": "SUQz", "format": "mp3"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}]}]}),
    );
    let req = Gemini
        .build(Endpoint::Chat, &body, false, &target(&a))
        .unwrap();
    assert_eq!(
        req.dropped,
        ["messages[].name", "messages[].content[].image_url.detail"]
    );
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        sent["contents"],
        json!([{"role": "user", "parts": [{"text": "Compare"},
            {"inline_data": {"mime_type": "application/pdf", "data": "JVBERi0x"}},
            {"inline_data": {"mime_type": "text/markdown", "data": "IyBoaQ=="}},
            {"inline_data": {"mime_type": "audio/wav", "data": "UklGRg=="}},
            {"inline_data": {"mime_type": "audio/mp3", "data": "SUQz"}},
            {"inline_data": {"mime_type": "image/png", "data": "AAAA"}}]}])
    );
    let by_id = map(
        json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": "file-abc"}}]}]}),
    );
    let e = Gemini
        .build(Endpoint::Chat, &by_id, false, &target(&a))
        .unwrap_err();
    assert_eq!(
        e.param.as_deref(),
        Some("messages[0].content[0].file.file_id")
    );
}

/// Gemini has no breakpoints to set (it caches on its own): `cache_control`
/// is left out and named, never refused.
#[test]
fn cache_breakpoints_are_dropped_and_named() {
    let a = auth();
    let body = map(json!({"model": "m", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "q"}]}));
    let req = Gemini
        .build(Endpoint::Chat, &body, false, &target(&a))
        .unwrap();
    assert_eq!(req.dropped, ["cache_control"]);
    assert!(!String::from_utf8_lossy(&req.body).contains("cache_control"));
}

/// Gemini 3 signs its function calls and refuses a replayed call without
/// its signature. The answer carries it on the tool call
/// (`extra_content.google.thought_signature`, as Google's own
/// OpenAI-compatible API does); sent back there, it goes out on the call's
/// part; a turn sent back without one gets Google's documented stand-in on
/// its first call. Gemini 2.x calls go out unsigned as before.
#[test]
fn gemini_3_thought_signatures_go_out_and_come_back() {
    let a = auth();
    let answer = br#"{"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}, "thoughtSignature": "c2lnLTE="},
        {"functionCall": {"name": "get_time", "args": {}}}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3, "totalTokenCount": 8}, "responseId": "r1"}"#;
    let (m, _) = parse_chat("google", answer).unwrap();
    let calls = m["choices"][0]["message"]["tool_calls"].clone();
    assert_eq!(
        calls[0]["extra_content"],
        json!({"google": {"thought_signature": "c2lnLTE="}})
    );
    assert!(calls[1].get("extra_content").is_none());
    let replay = |calls: Value, model: &'static str| {
        let body = map(json!({"model": "m", "messages": [
            {"role": "user", "content": "Weather and time in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c1", "content": "22 C"}]}));
        let t = Target {
            model,
            ..target(&a)
        };
        let req = Gemini.build(Endpoint::Chat, &body, false, &t).unwrap();
        let sent: Value = serde_json::from_slice(&req.body).unwrap();
        sent["contents"][1]["parts"].clone()
    };
    let with_ids = json!([
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"},
            "extra_content": {"google": {"thought_signature": "c2lnLTE="}}},
        {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]);
    let parts = replay(with_ids.clone(), "gemini-3-pro-preview");
    assert_eq!(parts[0]["thoughtSignature"], "c2lnLTE=");
    assert!(parts[1].get("thoughtSignature").is_none());
    let mut bare = with_ids.clone();
    bare[0].as_object_mut().unwrap().remove("extra_content");
    let parts = replay(bare.clone(), "gemini-3-flash-preview");
    assert_eq!(
        parts[0]["thoughtSignature"],
        "skip_thought_signature_validator"
    );
    assert!(parts[1].get("thoughtSignature").is_none());
    let parts = replay(bare, "gemini-2.5-flash");
    assert!(parts
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p.get("thoughtSignature").is_none()));
}

/// A thought summary (`thought: true` parts, which `includeThoughts` asks
/// for) comes back as `reasoning_content`, apart from the answer's text.
#[test]
fn thought_summaries_come_back_as_reasoning() {
    let answer = br#"{"candidates": [{"content": {"role": "model", "parts": [
        {"text": "Weighing the options.", "thought": true}, {"text": "Take the train."}]},
        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3, "thoughtsTokenCount": 7, "totalTokenCount": 15}}"#;
    let (m, u) = parse_chat("google", answer).unwrap();
    let msg = &m["choices"][0]["message"];
    assert_eq!(msg["content"], "Take the train.");
    assert_eq!(msg["reasoning_content"], "Weighing the options.");
    assert_eq!(u.unwrap().reasoning_tokens, 7);
    let plain = br#"{"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}, "finishReason": "STOP"}]}"#;
    let (m, _) = parse_chat("google", plain).unwrap();
    assert!(m["choices"][0]["message"]
        .get("reasoning_content")
        .is_none());
}

#[test]
fn logprobs_are_asked_for_and_come_back_in_openais_shape() {
    let a = auth();
    let ask = |extra: Value| {
        let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        let req = Gemini
            .build(Endpoint::Chat, &map(b), false, &target(&a))
            .unwrap();
        let v: Value = serde_json::from_slice(&req.body).unwrap();
        v.get("generationConfig").cloned().unwrap_or(json!({}))
    };
    let gc = ask(json!({"logprobs": true, "top_logprobs": 3}));
    assert_eq!(
        (gc["responseLogprobs"].clone(), gc["logprobs"].clone()),
        (json!(true), json!(3))
    );
    let gc = ask(json!({"logprobs": true}));
    assert_eq!(gc["responseLogprobs"], true);
    assert!(gc.get("logprobs").is_none());
    // `logprobs: false` (and `top_logprobs: 0`) asks for nothing.
    let gc = ask(json!({"logprobs": false, "top_logprobs": 0}));
    assert!(gc.get("responseLogprobs").is_none() && gc.get("logprobs").is_none());

    // An answer's logprobsResult: a zero log probability is left out by Google's JSON.
    let result = json!({
        "topCandidates": [
            {"candidates": [{"token": "Hi", "tokenId": 1, "logProbability": -0.01}, {"token": "Hello", "tokenId": 2, "logProbability": -4.6}]},
            {"candidates": [{"token": "!", "tokenId": 3}]}
        ],
        "chosenCandidates": [{"token": "Hi", "tokenId": 1, "logProbability": -0.01}, {"token": "!", "tokenId": 3}],
        "logProbabilitySum": -0.01
    });
    let body = json!({"candidates": [{"content": {"parts": [{"text": "Hi!"}], "role": "model"},
        "finishReason": "STOP", "index": 0, "avgLogprobs": -0.005, "logprobsResult": result}],
        "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 2, "totalTokenCount": 4},
        "modelVersion": "gemini-2.5-flash", "responseId": "lp-1"});
    let (out, _) = Gemini
        .parse(
            Endpoint::Chat,
            "google",
            &JsonMap::new(),
            body.to_string().as_bytes(),
        )
        .unwrap();
    let lp = &out["choices"][0]["logprobs"];
    assert_eq!(lp["content"].as_array().unwrap().len(), 2);
    assert_eq!(lp["content"][0]["token"], "Hi");
    assert_eq!(lp["content"][0]["logprob"], -0.01);
    assert_eq!(lp["content"][0]["bytes"], json!([72, 105]));
    assert_eq!(lp["content"][0]["top_logprobs"][1]["token"], "Hello");
    assert_eq!(lp["content"][1]["logprob"], 0.0);
    assert_eq!(lp["content"][1]["top_logprobs"][0]["logprob"], 0.0);
    // Without logprobsResult: null, as OpenAI sends it.
    let plain =
        json!({"candidates": [{"content": {"parts": [{"text": "Hi"}]}, "finishReason": "STOP"}]});
    let (out, _) = Gemini
        .parse(
            Endpoint::Chat,
            "google",
            &JsonMap::new(),
            plain.to_string().as_bytes(),
        )
        .unwrap();
    assert!(out["choices"][0]["logprobs"].is_null());

    // Streamed: each event's tokens on the chunk that carries its text.
    let events = [
        json!({"candidates": [{"content": {"parts": [{"text": "Hi"}], "role": "model"}, "index": 0,
            "logprobsResult": {"topCandidates": [{"candidates": [{"token": "Hi", "logProbability": -0.01}]}],
                "chosenCandidates": [{"token": "Hi", "logProbability": -0.01}]}}],
            "modelVersion": "gemini-2.5-flash", "responseId": "lp-2"}),
        json!({"candidates": [{"content": {"parts": [{"text": "!"}], "role": "model"}, "index": 0, "finishReason": "STOP",
            "logprobsResult": {"topCandidates": [{"candidates": [{"token": "!", "logProbability": -0.5}]}],
                "chosenCandidates": [{"token": "!", "logProbability": -0.5}]}}],
            "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 2, "totalTokenCount": 4},
            "modelVersion": "gemini-2.5-flash", "responseId": "lp-2"}),
    ];
    let (chunks, _) = decode_events(&events, false);
    let with_text: Vec<Value> = chunks
        .into_iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .collect();
    let tokens: Vec<(String, f64)> = with_text
        .iter()
        .map(|c| {
            let e = &c["choices"][0]["logprobs"]["content"][0];
            (
                e["token"].as_str().unwrap().to_string(),
                e["logprob"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tokens,
        vec![("Hi".to_string(), -0.01), ("!".to_string(), -0.5)]
    );
}

#[test]
fn web_search_grounds_with_google_search_and_annotates_the_answer() {
    let a = auth();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "web_search_options": {"search_context_size": "high", "user_location": {"type": "approximate"}}});
    let req = Gemini
        .build(Endpoint::Chat, &map(body), false, &target(&a))
        .unwrap();
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(sent["tools"][1], json!({"google_search": {}}));
    assert_eq!(sent["tools"][0]["functionDeclarations"][0]["name"], "f");
    assert_eq!(
        req.dropped,
        vec![
            "web_search_options.search_context_size",
            "web_search_options.user_location"
        ]
    );

    // Supports are byte ranges of a text part: "é" is two bytes, one character.
    let grounded = |model: &str| {
        json!({"candidates": [{"content": {"parts": [{"text": "Intro. "}, {"text": "Café au lait costs €3."}], "role": "model"},
            "finishReason": "STOP", "index": 0,
            "groundingMetadata": {"webSearchQueries": ["cafe au lait price", "cafe prices paris"],
                "groundingChunks": [{"web": {"uri": "https://a.example", "title": "A"}}, {"web": {"uri": "https://b.example", "title": "B"}}],
                "groundingSupports": [
                    {"segment": {"partIndex": 1, "startIndex": 0, "endIndex": 26, "text": "Café au lait costs €3."}, "groundingChunkIndices": [0, 1, 0]},
                    {"segment": {"startIndex": 0, "endIndex": 6, "text": "Intro."}, "groundingChunkIndices": [1]}]}}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 9, "totalTokenCount": 14},
            "modelVersion": model, "responseId": "g-1"})
    };
    let (out, usage) = Gemini
        .parse(
            Endpoint::Chat,
            "google",
            &JsonMap::new(),
            grounded("gemini-2.5-flash").to_string().as_bytes(),
        )
        .unwrap();
    let m = &out["choices"][0]["message"];
    assert_eq!(m["content"], "Intro. Café au lait costs €3.");
    let ranges: Vec<(u64, u64, &str)> = m["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let c = &a["url_citation"];
            (
                c["start_index"].as_u64().unwrap(),
                c["end_index"].as_u64().unwrap(),
                c["url"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ranges,
        vec![
            (7, 29, "https://a.example"),
            (7, 29, "https://b.example"),
            (0, 6, "https://b.example")
        ]
    );
    // Gemini 2.x bills a grounded answer, 3 each query.
    assert_eq!(usage.unwrap().web_searches, 1);
    let (_, usage) = Gemini
        .parse(
            Endpoint::Chat,
            "google",
            &JsonMap::new(),
            grounded("gemini-3-pro-preview").to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(usage.unwrap().web_searches, 2);
    assert!(
        Gemini.web_search_price("gemini-3-pro-preview")
            < Gemini.web_search_price("gemini-2.5-flash")
    );

    // Streamed: the ranges are of the whole text, annotated at the finish.
    let events = [
        json!({"candidates": [{"content": {"parts": [{"text": "Café "}], "role": "model"}, "index": 0}],
            "modelVersion": "gemini-2.5-flash", "responseId": "g-2"}),
        json!({"candidates": [{"content": {"parts": [{"text": "crème."}], "role": "model"}, "index": 0, "finishReason": "STOP",
            "groundingMetadata": {"webSearchQueries": ["cafe"], "groundingChunks": [{"web": {"uri": "https://a.example", "title": "A"}}],
                "groundingSupports": [{"segment": {"startIndex": 6, "endIndex": 13}, "groundingChunkIndices": [0]}]}}],
            "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 3, "totalTokenCount": 5},
            "modelVersion": "gemini-2.5-flash", "responseId": "g-2"}),
    ];
    let (chunks, usage) = decode_events(&events, true);
    let annotations: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("annotations").cloned())
        .collect();
    assert_eq!(
        annotations,
        vec![
            json!([{"type": "url_citation", "url_citation": {"start_index": 5, "end_index": 11,
            "url": "https://a.example", "title": "A"}}])
        ]
    );
    assert_eq!(usage.map(|u| u.web_searches), Some(1));
}

/// A stream of whole Gemini response objects through a decoder (told of a
/// web search or not): its chunks and its usage.
fn decode_events(events: &[Value], searching: bool) -> (Vec<Value>, Option<Usage>) {
    let mut d = Decoder {
        provider: "google".into(),
        searching,
        ..Decoder::default()
    };
    let mut items = Vec::new();
    for e in events {
        let ev = crate::sse::Event {
            data: e.to_string(),
            ..Default::default()
        };
        d.on_event(&ev, &mut items).unwrap();
    }
    d.finish(&mut items).unwrap();
    let mut chunks = Vec::new();
    let mut usage = None;
    for i in items {
        match i {
            StreamItem::Chunk(b) => chunks.push(serde_json::from_slice(&b).unwrap()),
            StreamItem::Usage(u, _) => usage = Some(u),
            StreamItem::Done => {}
        }
    }
    (chunks, usage)
}

/// A client's own `countTokens` body: its contents as they came, or its
/// `generateContentRequest` naming the deployment's model (Gemini's API)
/// or unwrapped (Vertex AI).
#[test]
fn count_bodies_name_the_deployments_model() {
    let plain = json!({"contents": [{"parts": [{"text": "hi"}]}]});
    let out: Value = serde_json::from_slice(
        &count_body(plain.as_object().unwrap(), "gemini-2.5-flash", true).unwrap(),
    )
    .unwrap();
    assert_eq!(out, plain);
    let nested = json!({"generateContentRequest": {"model": "models/google/gemini-2.5-flash",
        "contents": [{"parts": [{"text": "hi"}]}], "tools": [{"codeExecution": {}}]}});
    let out: Value = serde_json::from_slice(
        &count_body(nested.as_object().unwrap(), "gemini-2.5-flash", true).unwrap(),
    )
    .unwrap();
    assert_eq!(
        out["generateContentRequest"]["model"],
        "models/gemini-2.5-flash"
    );
    let out: Value = serde_json::from_slice(
        &count_body(nested.as_object().unwrap(), "gemini-2.5-flash", false).unwrap(),
    )
    .unwrap();
    assert_eq!(
        out,
        json!({"contents": [{"parts": [{"text": "hi"}]}], "tools": [{"codeExecution": {}}]})
    );
}
