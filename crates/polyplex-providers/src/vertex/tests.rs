use super::*;
use crate::AuthStyle;
use serde_json::json;

fn target<'a>(a: &'a AuthStyle, model: &'a str) -> Target<'a> {
    Target {
        provider: "vertex",
        base_url:
            "https://us-east5-aiplatform.googleapis.com/v1/projects/my-proj/locations/us-east5",
        api_key: None,
        credential: None,
        auth: a,
        model,
        extra_headers: &[],
        stream_usage: true,
        default_max_tokens: Some(1000),
        drop_params: false,
        api_version: None,
        sigv4: None,
    }
}

fn map(v: serde_json::Value) -> JsonMap {
    v.as_object().unwrap().clone()
}

#[test]
fn urls_and_bodies_by_publisher() {
    assert_eq!(
        base_url_for("p1", "europe-west4"),
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/p1/locations/europe-west4"
    );
    assert_eq!(
        base_url_for("p1", "global"),
        "https://aiplatform.googleapis.com/v1/projects/p1/locations/global"
    );
    let a = AuthStyle::bearer();
    let body = map(
        json!({"model": "vertex/x", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}], "max_tokens": 20}),
    );
    // Claude: the Messages body without `model`, with Vertex's version.
    let req = Vertex
        .build(
            Endpoint::Chat,
            &body,
            false,
            &target(&a, "claude-sonnet-4-5@20250929"),
        )
        .unwrap();
    assert_eq!(req.url, "https://us-east5-aiplatform.googleapis.com/v1/projects/my-proj/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict");
    let sent: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(sent["anthropic_version"], "vertex-2023-10-16");
    assert!(sent.get("model").is_none());
    assert_eq!(sent["system"], "sys");
    assert_eq!(sent["max_tokens"], 20);
    let req = Vertex
        .build(
            Endpoint::Chat,
            &body,
            true,
            &target(&a, "claude-sonnet-4-5@20250929"),
        )
        .unwrap();
    assert!(req.url.ends_with(":streamRawPredict"));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&req.body).unwrap()["stream"],
        true
    );
    // Gemini: generateContent's body.
    let req = Vertex
        .build(Endpoint::Chat, &body, true, &target(&a, "gemini-2.5-flash"))
        .unwrap();
    assert_eq!(req.url, "https://us-east5-aiplatform.googleapis.com/v1/projects/my-proj/locations/us-east5/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse");
    let sent: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(sent["contents"][0]["parts"][0]["text"], "hi");
    assert_eq!(sent["systemInstruction"]["parts"][0]["text"], "sys");
    // A model name that is not one path segment is refused.
    let e = Vertex
        .build(Endpoint::Chat, &body, false, &target(&a, "../x"))
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("model"));
    // Embeddings: predict, one instance per text.
    let req = Vertex
        .build(
            Endpoint::Embeddings,
            &map(json!({"model": "m", "input": ["a", "b"], "dimensions": 8})),
            false,
            &target(&a, "gemini-embedding-001"),
        )
        .unwrap();
    assert!(req
        .url
        .ends_with("/publishers/google/models/gemini-embedding-001:predict"));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&req.body).unwrap(),
        json!({"instances": [{"content": "a"}, {"content": "b"}], "parameters": {"outputDimensionality": 8}})
    );
    let reply = br#"{"predictions":[{"embeddings":{"statistics":{"truncated":false,"token_count":2},"values":[0.5,-0.25]}},{"embeddings":{"statistics":{"truncated":false,"token_count":3},"values":[1.0,0.0]}}]}"#;
    let (out, usage) = Vertex
        .parse(Endpoint::Embeddings, "vertex", &JsonMap::new(), reply)
        .unwrap();
    assert_eq!(out["data"][1]["embedding"], json!([1.0, 0.0]));
    assert_eq!(usage.unwrap().prompt_tokens, 5);
    // Claude models embed nothing.
    assert!(Vertex
        .build(
            Endpoint::Embeddings,
            &map(json!({"input": "x"})),
            false,
            &target(&a, "claude-haiku-4-5@20251001")
        )
        .is_err());
}

#[test]
fn answers_errors_and_streams_by_shape() {
    let claude = br#"{"id":"msg_vrtx_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Hi!"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":3}}"#;
    let (out, usage) = Vertex
        .parse(Endpoint::Chat, "vertex", &JsonMap::new(), claude)
        .unwrap();
    assert_eq!(out["id"], "msg_vrtx_01");
    assert_eq!(out["choices"][0]["message"]["content"], "Hi!");
    assert_eq!(usage.unwrap().prompt_tokens, 9);
    let gemini = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":1,"totalTokenCount":5},"modelVersion":"gemini-2.5-flash","responseId":"abc"}"#;
    let (out, usage) = Vertex
        .parse(Endpoint::Chat, "vertex", &JsonMap::new(), gemini)
        .unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], "Hello");
    assert_eq!(usage.unwrap().completion_tokens, 1);
    // Errors in either shape.
    let e = Vertex.error(
        "vertex",
        StatusCode::TOO_MANY_REQUESTS,
        br#"{"error":{"code":429,"message":"Quota exceeded for aiplatform.googleapis.com/generate_content_requests_per_minute_per_project_per_base_model","status":"RESOURCE_EXHAUSTED"}}"#,
    );
    assert_eq!(
        (e.status.as_u16(), e.code.as_deref()),
        (429, Some("resource_exhausted"))
    );
    let e = Vertex.error(
        "vertex",
        StatusCode::from_u16(529).unwrap(),
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    );
    assert_eq!(e.status.as_u16(), 503);
    // Streams: Anthropic's events for Claude, Gemini's otherwise.
    let req = polyplex_types::RequestBody::from_map(JsonMap::new());
    let mut d = Vertex.stream_decoder(Endpoint::Chat, "vertex", "claude-haiku-4-5@20251001", &req);
    let mut out = Vec::new();
    d.on_event(
        &crate::sse::Event {
            event: Some("message_start".into()),
            data: r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-haiku-4-5","usage":{"input_tokens":3,"output_tokens":1}}}"#.into(),
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(out.len(), 1);
    let mut d = Vertex.stream_decoder(Endpoint::Chat, "vertex", "gemini-2.5-flash", &req);
    let mut out = Vec::new();
    d.on_event(
        &crate::sse::Event {
            event: None,
            data: r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi"}]}}],"responseId":"r"}"#.into(),
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(out.len(), 2);
}

/// A quick-validated body reaches Claude on Vertex without its tree, as the
/// same bytes the tree would give; Gemini's request still reads the tree.
#[test]
fn quick_bodies_reach_claude_without_a_tree() {
    let a = AuthStyle::bearer();
    let text = r#"{"model":"vertex/claude-sonnet-4-5@20250929","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"max_tokens":50,"temperature":0.5}"#;
    let quick = || {
        let (_, shape) = polyplex_types::validate::chat_quick(text.as_bytes()).unwrap();
        RequestBody::quick(Bytes::from_static(text.as_bytes()), shape)
    };
    let tree: JsonMap = serde_json::from_str(text).unwrap();
    for stream in [false, true] {
        let t = target(&a, "claude-sonnet-4-5@20250929");
        let body = quick();
        let fast = Vertex
            .build_from(Endpoint::Chat, &body, stream, &t)
            .unwrap();
        assert!(!body.has_tree());
        let slow = Vertex.build(Endpoint::Chat, &tree, stream, &t).unwrap();
        assert_eq!(fast.url, slow.url);
        assert_eq!(fast.body, slow.body);
        let sent: Value = serde_json::from_slice(&fast.body).unwrap();
        assert_eq!(sent["anthropic_version"], ANTHROPIC_VERSION);
        assert_eq!(sent["system"], "Be brief.");
        assert!(sent.get("model").is_none());

        let t = target(&a, "gemini-2.5-flash");
        let fast = Vertex
            .build_from(Endpoint::Chat, &quick(), stream, &t)
            .unwrap();
        let slow = Vertex.build(Endpoint::Chat, &tree, stream, &t).unwrap();
        assert_eq!((fast.url, fast.body), (slow.url, slow.body));
    }
}
