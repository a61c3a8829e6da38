//! GPT-5's custom (free-form) tools on a protocol that has function tools
//! only: each custom tool is declared as a function taking one string,
//! `input` (its description saying so, and the grammar its input must
//! match, if it has one); a custom tool call sent back in the history goes
//! as that function's call; and the provider's calls of those functions
//! come back as custom tool calls — their `input` text, unescaped from the
//! arguments' JSON as it streams ([`CustomStream`]).

use polyplex_types::{lookup, member, JsonMap};
use serde_json::{json, Value};

/// The one parameter a custom tool's stand-in function takes.
const INPUT: &str = "input";

/// Whether the request declares a custom tool or sends a call of one back.
pub(crate) fn uses_custom(body: &JsonMap) -> bool {
    let custom = |v: &Value| member(v, "type").and_then(Value::as_str) == Some("custom");
    let tools = lookup(body, "tools").and_then(Value::as_array);
    if tools.into_iter().flatten().any(custom) {
        return true;
    }
    let msgs = lookup(body, "messages").and_then(Value::as_array);
    msgs.into_iter()
        .flatten()
        .filter_map(|m| member(m, "tool_calls").and_then(Value::as_array))
        .flatten()
        .any(custom)
}

/// The names of the custom tools a request declares.
pub fn custom_names(body: &JsonMap) -> Vec<String> {
    lookup(body, "tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| member(t, "type").and_then(Value::as_str) == Some("custom"))
        .filter_map(|t| t.pointer("/custom/name").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// A custom tool as the function that stands in for it.
fn as_function(custom: &Value) -> Value {
    let name = member(custom, "name").cloned().unwrap_or(Value::Null);
    let mut about = member(custom, "description")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !about.is_empty() {
        about.push_str("\n\n");
    }
    about.push_str("Call it with its whole input, as free text, in the `input` string.");
    let format = member(custom, "format");
    if format
        .and_then(|f| member(f, "type"))
        .and_then(Value::as_str)
        == Some("grammar")
    {
        let g = format.and_then(|f| member(f, "grammar"));
        let syntax = g
            .and_then(|g| member(g, "syntax"))
            .and_then(Value::as_str)
            .unwrap_or("lark");
        let definition = g
            .and_then(|g| member(g, "definition"))
            .and_then(Value::as_str)
            .unwrap_or("");
        about.push_str(&format!(
            " The input must match this {syntax} grammar:\n{definition}"
        ));
    }
    json!({"type": "function", "function": {"name": name, "description": about,
        "parameters": {"type": "object", "properties": {INPUT: {"type": "string"}},
            "required": [INPUT], "additionalProperties": false}}})
}

/// A custom tool chosen (by `tool_choice`, or among `allowed_tools`) as
/// its function.
fn choice_as_function(c: &Value) -> Value {
    if member(c, "type").and_then(Value::as_str) == Some("custom") {
        let name = c.pointer("/custom/name").cloned().unwrap_or(Value::Null);
        return json!({"type": "function", "function": {"name": name}});
    }
    c.clone()
}

/// The request with its custom tools, their choice and their calls in the
/// history as function tools, choices and calls.
pub(crate) fn as_functions(body: &JsonMap) -> JsonMap {
    let mut out = body.clone();
    if let Some(Value::Array(tools)) = out.get_mut("tools") {
        for t in tools.iter_mut() {
            if member(t, "type").and_then(Value::as_str) == Some("custom") {
                *t = as_function(member(t, "custom").unwrap_or(&Value::Null));
            }
        }
    }
    if let Some(c) = out.get_mut("tool_choice") {
        *c = choice_as_function(c);
        if let Some(Value::Array(allowed)) = c.pointer_mut("/allowed_tools/tools") {
            for a in allowed.iter_mut() {
                *a = choice_as_function(a);
            }
        }
    }
    if let Some(Value::Array(msgs)) = out.get_mut("messages") {
        for m in msgs.iter_mut() {
            let Some(Value::Array(calls)) = m.get_mut("tool_calls") else {
                continue;
            };
            for c in calls.iter_mut() {
                if member(c, "type").and_then(Value::as_str) != Some("custom") {
                    continue;
                }
                let input = c.pointer("/custom/input").cloned().unwrap_or(json!(""));
                let arguments = json!({INPUT: input}).to_string();
                *c = json!({"id": member(c, "id").cloned().unwrap_or(Value::Null), "type": "function",
                    "function": {"name": c.pointer("/custom/name").cloned().unwrap_or(Value::Null),
                        "arguments": arguments}});
            }
        }
    }
    out
}

/// A stand-in function's arguments as the custom tool's input: the
/// `input` string, else (a model that wrote something else) the arguments
/// as they are.
fn input_of(arguments: &str) -> String {
    serde_json::from_str::<Value>(arguments)
        .ok()
        .and_then(|v| v.get(INPUT).and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| arguments.to_string())
}

/// A translated answer's calls of a custom tool's stand-in function as
/// custom tool calls (`custom: {name, input}`).
pub fn calls_to_custom(answer: &mut JsonMap, names: &[String]) {
    let Some(Value::Array(choices)) = answer.get_mut("choices") else {
        return;
    };
    for c in choices {
        let Some(Value::Array(calls)) = c.pointer_mut("/message/tool_calls") else {
            continue;
        };
        for call in calls.iter_mut() {
            let Some(name) = call.pointer("/function/name").and_then(Value::as_str) else {
                continue;
            };
            if !names.iter().any(|n| n == name) {
                continue;
            }
            let arguments = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("");
            *call = json!({"id": member(call, "id").cloned().unwrap_or(Value::Null), "type": "custom",
                "custom": {"name": name, "input": input_of(arguments)}});
        }
    }
}

/// Turns a translated stream's calls of custom tools' stand-in functions
/// into custom tool call deltas as the chunks pass: the first delta names
/// the tool, the next ones carry the input's text as it is unescaped from
/// the arguments' JSON.
#[derive(Debug)]
pub struct CustomStream {
    names: Vec<String>,
    /// The custom calls seen: (choice, tool call index), and their input.
    calls: Vec<((u64, u64), InputText)>,
}

impl CustomStream {
    pub fn new(names: Vec<String>) -> Self {
        CustomStream {
            names,
            calls: Vec::new(),
        }
    }

    /// Rewrites one chunk's tool call deltas in place.
    pub fn on_chunk(&mut self, chunk: &mut JsonMap) {
        let Some(Value::Array(choices)) = chunk.get_mut("choices") else {
            return;
        };
        for c in choices {
            let choice = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let Some(Value::Array(calls)) = c.pointer_mut("/delta/tool_calls") else {
                continue;
            };
            for call in calls.iter_mut() {
                let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                let key = (choice, index);
                let name = call.pointer("/function/name").and_then(Value::as_str);
                let known = self.calls.iter().position(|(k, _)| *k == key);
                let at = match (known, name) {
                    (Some(at), _) => at,
                    (None, Some(n)) if self.names.iter().any(|c| c == n) => {
                        self.calls.push((key, InputText::default()));
                        self.calls.len() - 1
                    }
                    _ => continue,
                };
                let fragment = call
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let text = self.calls[at].1.feed(fragment);
                let mut custom = json!({"input": text});
                if let Some(n) = name {
                    custom["name"] = json!(n);
                }
                let mut delta = json!({"index": index, "custom": custom});
                if let Some(id) = call.get("id") {
                    delta["id"] = id.clone();
                    delta["type"] = json!("custom");
                }
                *call = delta;
            }
        }
    }
}

/// The text of the `input` string of a JSON object written in pieces,
/// unescaped as it comes; what a model wrote other than that one member
/// is given whole once the object ends.
#[derive(Debug, Default)]
struct InputText {
    /// Everything received.
    raw: String,
    /// Where in `raw` the string's unread text starts, once found.
    at: Option<usize>,
    /// The string has ended.
    done: bool,
    /// Text was given (from the string, or the whole arguments).
    gave: bool,
}

impl InputText {
    /// Takes the next piece; returns the input text it completes.
    fn feed(&mut self, piece: &str) -> String {
        self.raw.push_str(piece);
        if self.done {
            return String::new();
        }
        if self.at.is_none() {
            self.at = string_start(&self.raw);
            if self.at.is_none() {
                // Not (yet) `{"input": "`: given whole once it parses.
                if serde_json::from_str::<Value>(&self.raw).is_ok() {
                    self.done = true;
                    self.gave = true;
                    return input_of(&self.raw);
                }
                return String::new();
            }
        }
        let Some(from) = self.at else {
            return String::new();
        };
        let (text, used, ended) = unescape(&self.raw[from..]);
        self.at = Some(from + used);
        self.done = ended;
        self.gave |= !text.is_empty();
        text
    }
}

/// Where the text of the `input` string starts in `raw` (just after its
/// opening quote), if `raw` begins `{"input": "`.
fn string_start(raw: &str) -> Option<usize> {
    let t = raw.trim_start();
    let mut rest = t.strip_prefix('{')?.trim_start();
    rest = rest.strip_prefix("\"input\"")?.trim_start();
    rest = rest.strip_prefix(':')?.trim_start();
    rest = rest.strip_prefix('"')?;
    Some(raw.len() - rest.len())
}

/// The text of a JSON string's body up to its end or to an escape cut
/// off: the text, the bytes read, and whether the closing quote was read.
fn unescape(s: &str) -> (String, usize, bool) {
    let mut out = String::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return (out, i + 1, true),
            b'\\' => {
                let Some(&e) = bytes.get(i + 1) else { break };
                let simple = match e {
                    b'"' => Some('"'),
                    b'\\' => Some('\\'),
                    b'/' => Some('/'),
                    b'b' => Some('\u{8}'),
                    b'f' => Some('\u{c}'),
                    b'n' => Some('\n'),
                    b'r' => Some('\r'),
                    b't' => Some('\t'),
                    _ => None,
                };
                if let Some(c) = simple {
                    out.push(c);
                    i += 2;
                    continue;
                }
                // \uXXXX, a surrogate pair as two of them.
                let Some(hex) = s.get(i + 2..i + 6) else {
                    break;
                };
                let Ok(u) = u32::from_str_radix(hex, 16) else {
                    i += 2;
                    continue;
                };
                if (0xD800..0xDC00).contains(&u) {
                    let Some(low) = s.get(i + 8..i + 12) else {
                        break;
                    };
                    let l = u32::from_str_radix(low, 16).unwrap_or(0);
                    let c = 0x10000 + ((u - 0xD800) << 10) + (l.wrapping_sub(0xDC00) & 0x3FF);
                    out.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
                    i += 12;
                } else {
                    out.push(char::from_u32(u).unwrap_or('\u{FFFD}'));
                    i += 6;
                }
            }
            _ => {
                // One whole UTF-8 character.
                let len = s[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&s[i..i + len]);
                i += len;
            }
        }
    }
    (out, i, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> JsonMap {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn custom_tools_their_choice_and_calls_become_functions() {
        let body = map(json!({"tools": [
                {"type": "function", "function": {"name": "f"}},
                {"type": "custom", "custom": {"name": "code", "description": "Runs code.",
                    "format": {"type": "grammar", "grammar": {"syntax": "regex", "definition": "print\\(.*\\)"}}}}],
            "tool_choice": {"type": "custom", "custom": {"name": "code"}},
            "messages": [{"role": "user", "content": "go"},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "custom",
                    "custom": {"name": "code", "input": "print(\"hi\")"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "hi"}]}));
        assert!(uses_custom(&body));
        assert_eq!(custom_names(&body), vec!["code".to_string()]);
        let out = as_functions(&body);
        assert_eq!(out["tools"][0], body["tools"][0]);
        let f = &out["tools"][1]["function"];
        assert_eq!(f["name"], "code");
        assert_eq!(f["parameters"]["required"], json!(["input"]));
        let about = f["description"].as_str().unwrap();
        assert!(about.starts_with("Runs code.") && about.contains("regex grammar:\nprint\\(.*\\)"));
        assert_eq!(
            out["tool_choice"],
            json!({"type": "function", "function": {"name": "code"}})
        );
        let call = &out["messages"][1]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(
            serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
            json!({"input": "print(\"hi\")"})
        );
        assert!(!uses_custom(&map(
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]})
        )));
    }

    #[test]
    fn the_stand_ins_calls_come_back_as_custom_calls() {
        let mut answer = map(json!({"choices": [{"index": 0, "message": {"tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "code", "arguments": "{\"input\": \"x = 1\\ny\"}"}},
            {"id": "c", "type": "function", "function": {"name": "code", "arguments": "not json"}}]}}]}));
        calls_to_custom(&mut answer, &["code".into()]);
        let calls = &answer["choices"][0]["message"]["tool_calls"];
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(
            calls[1],
            json!({"id": "b", "type": "custom", "custom": {"name": "code", "input": "x = 1\ny"}})
        );
        assert_eq!(calls[2]["custom"]["input"], "not json");
    }

    /// The input is unescaped as its pieces come, whatever the cuts: in
    /// the middle of an escape, of a \u sequence, of a surrogate pair.
    #[test]
    fn a_streamed_input_is_unescaped_as_it_comes() {
        let input = "line 1\n\t\"quoted\" \\ é 😀 end";
        let arguments = json!({"input": input}).to_string();
        let escaped = arguments
            .replace('é', "\\u00e9")
            .replace('😀', "\\ud83d\\ude00");
        for text in [arguments.clone(), escaped] {
            for size in [1, 2, 3, 5, 7, 100] {
                let mut s = CustomStream::new(vec!["code".into()]);
                let mut got = String::new();
                let chars: Vec<char> = text.chars().collect();
                let mut first = true;
                for piece in chars.chunks(size) {
                    let piece: String = piece.iter().collect();
                    let mut call = json!({"index": 0, "function": {"arguments": piece}});
                    if first {
                        call["id"] = json!("t1");
                        call["function"]["name"] = json!("code");
                    }
                    let mut chunk =
                        map(json!({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}));
                    s.on_chunk(&mut chunk);
                    let d = &chunk["choices"][0]["delta"]["tool_calls"][0];
                    if first {
                        assert_eq!(
                            (d["type"].clone(), d["id"].clone()),
                            (json!("custom"), json!("t1"))
                        );
                        assert_eq!(d["custom"]["name"], "code");
                        first = false;
                    }
                    assert!(d.get("function").is_none());
                    got.push_str(d["custom"]["input"].as_str().unwrap());
                }
                assert_eq!(got, input, "{text} in pieces of {size}");
            }
        }
        // Another function's deltas pass untouched.
        let mut s = CustomStream::new(vec!["code".into()]);
        let mut chunk = map(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "t", "function": {"name": "f", "arguments": "{}"}}]}}]}));
        let before = chunk.clone();
        s.on_chunk(&mut chunk);
        assert_eq!(chunk, before);
        // Arguments that are not `{"input": "...`: given whole at their end.
        let mut s = CustomStream::new(vec!["code".into()]);
        let mut texts = Vec::new();
        for (i, piece) in ["{\"other\":", " 1}"].iter().enumerate() {
            let mut call = json!({"index": 0, "function": {"arguments": piece}});
            if i == 0 {
                call["function"]["name"] = json!("code");
            }
            let mut chunk =
                map(json!({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}));
            s.on_chunk(&mut chunk);
            texts.push(chunk["choices"][0]["delta"]["tool_calls"][0]["custom"]["input"].clone());
        }
        assert_eq!(texts, vec![json!(""), json!("{\"other\": 1}")]);
    }
}
