//! The mock's rerank endpoints: Cohere's `POST /v2/rerank` (a Bearer key,
//! strings only, unknown members refused, search units billed) and the
//! OpenAI-compatible providers' `POST /v1/rerank` (Jina's shape: documents
//! returned, tokens in `usage`). A document's score is the share of the
//! query's words it contains, so the order is predictable.

use super::reply::tokenize;
use super::{admit, error, MockState, Shape};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::Arc;

/// Lower-cased words of a text.
fn words(text: &str) -> HashSet<String> {
    tokenize(text)
        .into_iter()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric())
                .collect::<String>()
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Each document's index and score, most relevant first, cut to `top_n`.
fn scores(query: &str, documents: &[&str], top_n: Option<u64>) -> Vec<(usize, f64)> {
    let q = words(query);
    let mut out: Vec<(usize, f64)> = documents
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let shared = words(d).intersection(&q).count();
            let score = shared as f64 / q.len().max(1) as f64;
            (i, (score * 1e4).round() / 1e4)
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out.truncate(top_n.map_or(usize::MAX, |n| n as usize));
    out
}

fn texts(req: &Map<String, Value>) -> Option<Vec<&str>> {
    req.get("documents")?
        .as_array()?
        .iter()
        .map(Value::as_str)
        .collect()
}

pub(super) async fn cohere(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(denied) = super::cohere::require_bearer(&headers) {
        return denied;
    }
    let (req, _) = match admit(&s, "/v2/rerank", &headers, &body, Shape::Cohere).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let bad = |m: String| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": format!("invalid request: {m}")})),
        )
            .into_response()
    };
    const KNOWN: &[&str] = &["model", "query", "documents", "top_n", "max_tokens_per_doc"];
    if let Some(k) = req.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return bad(format!("unknown field: parameter {k} is not a valid field"));
    }
    let (Some(query), Some(docs)) = (req.get("query").and_then(Value::as_str), texts(&req)) else {
        return bad("query and documents (a list of strings) are required".into());
    };
    let top_n = req.get("top_n").and_then(Value::as_u64);
    let results: Vec<Value> = scores(query, &docs, top_n)
        .into_iter()
        .map(|(index, score)| json!({"index": index, "relevance_score": score}))
        .collect();
    Json(json!({"id": s.next_id("rerank-mock-"), "results": results,
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": docs.len().div_ceil(100)}}}))
    .into_response()
}

pub(super) async fn compatible(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (req, _) = match admit(&s, "/v1/rerank", &headers, &body, Shape::OpenAi).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (Some(query), Some(docs)) = (req.get("query").and_then(Value::as_str), texts(&req)) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "query and documents (a list of strings) are required",
            None,
        );
    };
    let top_n = req.get("top_n").and_then(Value::as_u64);
    let returned = req
        .get("return_documents")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let results: Vec<Value> = scores(query, &docs, top_n)
        .into_iter()
        .map(|(index, score)| {
            let mut r = json!({"index": index, "relevance_score": score});
            if returned {
                r["document"] = json!({"text": docs[index]});
            }
            r
        })
        .collect();
    let tokens: usize = std::iter::once(query)
        .chain(docs.iter().copied())
        .map(|t| tokenize(t).len().max(1))
        .sum();
    let model = req.get("model").cloned().unwrap_or(Value::Null);
    Json(json!({"model": model, "usage": {"total_tokens": tokens}, "results": results}))
        .into_response()
}

/// Cohere's rerank models on Bedrock (`invoke`): Cohere's body without a
/// model, `api_version` 2 or more; the answer has no `meta`.
pub(super) fn bedrock(s: &MockState, req: &Map<String, Value>) -> Response {
    let bad = |m: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": format!("Malformed input request: {m}, please reformat your input and try again.")})),
        )
            .into_response()
    };
    if req.contains_key("model") {
        return bad("extraneous key [model] is not permitted");
    }
    if req.get("api_version").and_then(Value::as_u64).unwrap_or(1) < 2 {
        return bad("#/api_version: 1 is not greater or equal to 2");
    }
    let (Some(query), Some(docs)) = (req.get("query").and_then(Value::as_str), texts(req)) else {
        return bad("required keys [query, documents] not found");
    };
    let top_n = req.get("top_n").and_then(Value::as_u64);
    let results: Vec<Value> = scores(query, &docs, top_n)
        .into_iter()
        .map(|(index, score)| json!({"index": index, "relevance_score": score}))
        .collect();
    Json(json!({"id": s.next_id("rerank-mock-"), "results": results})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_sharing_more_of_the_query_rank_first() {
        let docs = [
            "the sky is blue",
            "Paris is the capital of France",
            "capital cities",
        ];
        let r = scores("What is the capital of France?", &docs, None);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 0, 2]);
        assert_eq!(scores("capital", &docs, Some(1)), vec![(1, 1.0)]);
    }
}
