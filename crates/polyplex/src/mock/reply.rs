//! The mock's deterministic answers: derived from the request only, so the
//! same request always gets the same content (ids and timestamps aside).

use serde_json::{json, Map, Value};

/// What the assistant "says" for one choice.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Text {
        pieces: Vec<String>,
        finish: &'static str,
    },
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
}

/// Text of a message's `content` (string, or the text parts of an array).
pub fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(
                        p.get("text")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    ),
                    Some("image_url") => out.push("[image]".to_string()),
                    Some(other) => out.push(format!("[{other}]")),
                    None => {}
                }
            }
            out.join(" ")
        }
        _ => String::new(),
    }
}

/// What the mock "thinks" before it answers (Claude's extended thinking,
/// Gemini's thought summary): about the last user turn of `oa`, a request
/// in OpenAI's shape.
pub fn thought_about(oa: &Map<String, Value>) -> String {
    let asked = oa
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|ms| ms.iter().rfind(|m| m["role"] == "user"))
        .map(|m| content_text(m.get("content")))
        .unwrap_or_default();
    format!("Thinking about: {asked}")
}

/// Mock tokens: words, each carrying its leading space (as BPE tokens do).
pub fn tokenize(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        if ch.is_whitespace() && !cur.trim().is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(ch);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub fn prompt_tokens(messages: &[Value]) -> u64 {
    let mut n = 3u64;
    for m in messages {
        n += 4 + tokenize(&content_text(m.get("content"))).len() as u64;
    }
    n
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

pub fn stable_id(prefix: &str, seed: &str) -> String {
    format!("{prefix}{:016x}", fnv(seed))
}

/// The last word that starts with a capital letter (a place, a name), else the text.
fn salient(text: &str) -> String {
    text.split_whitespace()
        .skip(1)
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|w| w.chars().next().is_some_and(char::is_uppercase))
        .last()
        .map(str::to_string)
        .unwrap_or_else(|| text.chars().take(40).collect())
}

/// A value that satisfies a (simple) JSON Schema, filled from `text`.
pub fn sample(schema: &Value, key: &str, text: &str) -> Value {
    if let Some(e) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return e.clone();
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("string"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match ty {
        "object" => {
            let mut o = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                let required: Vec<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                for (k, s) in props {
                    if required.is_empty() || required.contains(&k.as_str()) {
                        o.insert(k.clone(), sample(s, k, text));
                    }
                }
            }
            Value::Object(o)
        }
        "array" => Value::Array(vec![sample(
            schema.get("items").unwrap_or(&Value::Null),
            key,
            text,
        )]),
        "integer" => json!(schema.get("minimum").and_then(Value::as_i64).unwrap_or(1)),
        "number" => json!(schema.get("minimum").and_then(Value::as_f64).unwrap_or(1.5)),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => {
            let k = key.to_ascii_lowercase();
            if ["location", "city", "place", "country", "name"]
                .iter()
                .any(|w| k.contains(w))
            {
                json!(salient(text))
            } else {
                json!(text.chars().take(80).collect::<String>())
            }
        }
    }
}

/// What the mock's web search finds for the request `oa` (OpenAI's shape):
/// its query (the last user turn) and the one page, as (query, url, title).
pub fn search(oa: &Map<String, Value>) -> (String, String, String) {
    let query = last_user_text(
        oa.get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    );
    let slug: String = query
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let url = format!("https://search.mock/{slug}");
    let title = format!("Mock result for {query}");
    (query, url, title)
}

/// The text the mock puts before an answer it searched for.
pub const SEARCH_LEAD: &str = "Search results say: ";

fn last_user_text(messages: &[Value]) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| content_text(m.get("content")))
        .unwrap_or_default()
}

/// Cuts at the first stop sequence; true if one was found.
fn apply_stop(text: &mut String, stop: Option<&Value>) -> bool {
    let stops: Vec<&str> = match stop {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let cut = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s))
        .min();
    match cut {
        Some(i) => {
            text.truncate(i);
            true
        }
        None => false,
    }
}

/// Decides the answer for a chat request.
/// A call of a custom (free-form, GPT-5) tool, when the tool the request
/// would call is one: its id, name and text input (the user's text), as
/// OpenAI's chat API answers it. Only OpenAI's protocol has such tools.
pub fn custom_call(body: &Map<String, Value>) -> Option<(String, String, String)> {
    let messages = body.get("messages").and_then(Value::as_array)?;
    let last_role = messages
        .last()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str);
    if matches!(last_role, Some("tool" | "function")) {
        return None;
    }
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())?;
    let choice = body.get("tool_choice");
    if choice.and_then(Value::as_str) == Some("none") {
        return None;
    }
    let named = choice
        .and_then(|c| {
            c.pointer("/custom/name")
                .or_else(|| c.pointer("/function/name"))
        })
        .and_then(Value::as_str);
    let name_of = |t: &Value| {
        t.pointer("/custom/name")
            .or_else(|| t.pointer("/function/name"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let tool = named
        .and_then(|n| tools.iter().find(|t| name_of(t).as_deref() == Some(n)))
        .unwrap_or(&tools[0]);
    if tool.get("type").and_then(Value::as_str) != Some("custom") {
        return None;
    }
    let name = name_of(tool).unwrap_or_else(|| "tool".into());
    let input = last_user_text(messages);
    let id = stable_id("call_", &format!("{name}{input}{}", messages.len()));
    Some((id, name, input))
}

pub fn chat_answer(body: &Map<String, Value>) -> Answer {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let user = last_user_text(messages);
    let last = messages.last();
    let last_role = last
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        .unwrap_or("");

    // Deprecated function calling, as OpenAI still takes it: `functions`
    // are tools, `function_call` the choice, a `function` message a result.
    let legacy: Option<Vec<Value>> = body.get("functions").and_then(Value::as_array).map(|fs| {
        fs.iter()
            .map(|f| json!({"type": "function", "function": f}))
            .collect()
    });
    let legacy_choice = body.get("function_call").map(|c| match c.get("name") {
        Some(name) => json!({"type": "function", "function": {"name": name}}),
        None => c.clone(),
    });
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .or(legacy.as_ref())
        .filter(|t| !t.is_empty());
    let choice = body.get("tool_choice").or(legacy_choice.as_ref());
    let tool_choice_none = choice.and_then(Value::as_str) == Some("none");
    let answered = matches!(last_role, "tool" | "function");
    if let (Some(tools), false, false) = (tools, tool_choice_none, answered) {
        // A named function, or the first of `allowed_tools`.
        let named = choice
            .and_then(|c| c.get("function"))
            .or_else(|| choice.and_then(|c| c.pointer("/allowed_tools/tools/0/function")))
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str);
        let tool = named
            .and_then(|n| {
                tools
                    .iter()
                    .find(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(n))
            })
            .unwrap_or(&tools[0]);
        let name = tool
            .pointer("/function/name")
            .and_then(Value::as_str)
            .unwrap_or("tool")
            .to_string();
        let params = tool
            .pointer("/function/parameters")
            .cloned()
            .unwrap_or(json!({"type": "object"}));
        let args = sample(&params, "", &user);
        let arguments = serde_json::to_string(&args).unwrap_or_else(|_| "{}".into());
        return Answer::ToolCall {
            id: stable_id("call_", &format!("{name}{arguments}{}", messages.len())),
            name,
            arguments,
        };
    }

    let mut text = if answered {
        format!(
            "The tool returned: {}",
            content_text(last.and_then(|m| m.get("content")))
        )
    } else if user.is_empty() {
        "Hello from the polyplex mock.".to_string()
    } else {
        user.clone()
    };
    match body
        .get("response_format")
        .and_then(|r| r.get("type"))
        .and_then(Value::as_str)
    {
        Some("json_object") => text = json!({"reply": text}).to_string(),
        Some("json_schema") => {
            let schema = body
                .get("response_format")
                .and_then(|r| r.pointer("/json_schema/schema"))
                .cloned()
                .unwrap_or(json!({"type": "object"}));
            text = sample(&schema, "", &user).to_string();
        }
        _ => {}
    }
    let stopped = apply_stop(&mut text, body.get("stop"));
    let mut pieces = tokenize(&text);
    let limit = body
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| body.get("max_tokens").and_then(Value::as_u64));
    let mut finish = "stop";
    if let Some(max) = limit {
        if pieces.len() as u64 > max {
            pieces.truncate(max as usize);
            finish = "length";
        }
    }
    let _ = stopped;
    Answer::Text { pieces, finish }
}

/// Legacy completions: echo the prompt.
pub fn completion_answer(prompt: &str, body: &Map<String, Value>) -> (Vec<String>, &'static str) {
    let mut text = if prompt.is_empty() {
        "Hello from the polyplex mock.".to_string()
    } else {
        prompt.to_string()
    };
    apply_stop(&mut text, body.get("stop"));
    let mut pieces = tokenize(&text);
    if let Some(max) = body.get("max_tokens").and_then(Value::as_u64) {
        if pieces.len() as u64 > max {
            pieces.truncate(max as usize);
            return (pieces, "length");
        }
    }
    (pieces, "stop")
}

/// A deterministic unit vector for an embedding input.
pub fn embedding(input: &str, dims: usize) -> Vec<f32> {
    let mut h = fnv(input);
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            ((h % 20_000) as f32 / 10_000.0) - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn echoes_the_last_user_message() {
        let a = chat_answer(&body(
            json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Say this is a test"}]}),
        ));
        assert_eq!(
            a,
            Answer::Text {
                pieces: tokenize("Say this is a test"),
                finish: "stop"
            }
        );
        assert_eq!(tokenize("Say this is").concat(), "Say this is");
    }

    #[test]
    fn max_tokens_and_stop() {
        let a = chat_answer(&body(
            json!({"messages": [{"role": "user", "content": "one two three four"}], "max_tokens": 2}),
        ));
        assert_eq!(
            a,
            Answer::Text {
                pieces: vec!["one".into(), " two".into()],
                finish: "length"
            }
        );
        let a = chat_answer(&body(
            json!({"messages": [{"role": "user", "content": "one two three four"}], "stop": ["three"]}),
        ));
        assert_eq!(
            a,
            Answer::Text {
                pieces: vec!["one".into(), " two".into(), " ".into()],
                finish: "stop"
            }
        );
    }

    #[test]
    fn tool_call_arguments_follow_schema() {
        let a = chat_answer(&body(json!({
            "messages": [{"role": "user", "content": "What's the weather like in Paris today?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
                "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["location", "unit"]}}}]
        })));
        match a {
            Answer::ToolCall {
                name,
                arguments,
                id,
            } => {
                assert_eq!(name, "get_weather");
                assert!(id.starts_with("call_"));
                let v: Value = serde_json::from_str(&arguments).unwrap();
                assert_eq!(v, json!({"location": "Paris", "unit": "celsius"}));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_modes_give_json() {
        let a = chat_answer(&body(
            json!({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}),
        ));
        let Answer::Text { pieces, .. } = a else {
            panic!()
        };
        let v: Value = serde_json::from_str(&pieces.concat()).unwrap();
        assert_eq!(v["reply"], "hi");
        let a = chat_answer(&body(
            json!({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}}),
        ));
        let Answer::Text { pieces, .. } = a else {
            panic!()
        };
        assert_eq!(
            serde_json::from_str::<Value>(&pieces.concat()).unwrap(),
            json!({"n": 1})
        );
    }

    #[test]
    fn tool_result_is_acknowledged() {
        let a = chat_answer(&body(json!({"messages": [{"role": "user", "content": "x"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "22C"}],
            "tools": [{"type": "function", "function": {"name": "f"}}]})));
        let Answer::Text { pieces, .. } = a else {
            panic!()
        };
        assert_eq!(pieces.concat(), "The tool returned: 22C");
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding("hello", 8);
        assert_eq!(a, embedding("hello", 8));
        assert_ne!(a, embedding("world", 8));
        let n: f32 = a.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-4);
    }
}
