//! Reranking: a query and documents in, the documents' indices ordered by
//! relevance out.
//!
//! The gateway's `/v1/rerank` takes Cohere's request shape, which Jina,
//! Voyage, Together, vLLM and Infinity share (Voyage names `top_n`
//! `top_k`; Cohere on Bedrock takes it without the model, at `api_version`
//! 2). What goes upstream is the client's body with the
//! deployment's model, the documents as plain strings, and the gateway's
//! own members taken out (`models`, `provider`, `metadata`; and
//! `return_documents`, which the gateway honours itself from the
//! request's documents, whatever the upstream can do). Answers are read
//! in any of those providers' shapes ([`ranked`]).

use crate::{join_url, Target, UpstreamRequest};
use bytes::Bytes;
use polyplex_types::validate::{RerankMeta, GATEWAY_FIELDS};
use polyplex_types::{ErrorSource, GatewayError, JsonMap};
use serde_json::Value;

/// A rerank request as the client sent it, validated.
pub struct RerankCall<'a> {
    pub body: &'a JsonMap,
    pub meta: &'a RerankMeta,
}

/// The members of a rerank body that are the gateway's, not the upstream's.
const OURS: &[&str] = &["metadata", "return_documents", "user"];

impl RerankCall<'_> {
    /// The body for `model`: the client's members but the gateway's, the
    /// documents as strings, `top_n` under the name the upstream takes.
    pub fn body(&self, model: &str, top_n_as: &str) -> Result<Bytes, GatewayError> {
        let mut out = self.members(top_n_as);
        out.insert("model".into(), Value::String(model.to_string()));
        serde_json::to_vec(&out)
            .map(Bytes::from)
            .map_err(|e| GatewayError::internal(e.to_string()))
    }

    /// [`RerankCall::body`]'s members without the model (Bedrock names it
    /// in the URL).
    pub fn members(&self, top_n_as: &str) -> JsonMap {
        let mut out = JsonMap::with_capacity(self.body.len());
        for (k, v) in self.body {
            if GATEWAY_FIELDS.contains(&k.as_str()) || OURS.contains(&k.as_str()) || v.is_null() {
                continue;
            }
            match k.as_str() {
                "model" => {}
                "documents" => {
                    let texts = self.meta.documents.iter().cloned().map(Value::String);
                    out.insert(k.clone(), Value::Array(texts.collect()));
                }
                "top_n" => {
                    out.insert(top_n_as.to_string(), v.clone());
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        out
    }

    /// The JSON POST of this request to `url`.
    pub fn post(
        &self,
        url: String,
        top_n_as: &str,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        Ok(UpstreamRequest {
            url,
            headers: crate::headers(target, false)?,
            body: self.body(target.model, top_n_as)?,
            dropped: Vec::new(),
        })
    }
}

/// An OpenAI-compatible provider's rerank endpoint: `{base}/rerank` (Jina,
/// Voyage, Together, vLLM, Infinity put it beside `/embeddings`); not
/// OpenAI's own API, which has none.
pub fn compatible(
    call: &RerankCall<'_>,
    target: &Target<'_>,
) -> Result<UpstreamRequest, GatewayError> {
    // OpenAI's own API has none.
    if target.base_url.contains("api.openai.com") {
        return Err(not_offered(target, "openai"));
    }
    let top_n_as = if target.base_url.contains("voyageai.com") {
        "top_k"
    } else {
        "top_n"
    };
    call.post(join_url(target.base_url, "rerank"), top_n_as, target)
}

/// A protocol without a rerank endpoint: refused before anything is sent,
/// so another deployment of the plan may serve it.
pub fn not_offered(target: &Target<'_>, protocol: &str) -> GatewayError {
    let mut e = GatewayError::invalid_param(
        "model",
        format!(
            "Provider `{}` ({protocol} protocol) does not offer /v1/rerank through polyplex; Cohere's and OpenAI-compatible providers with a /rerank endpoint (Jina, Voyage, Together, vLLM ...) do.",
            target.provider
        ),
    );
    e.source = ErrorSource::Translation;
    e
}

/// An upstream's rerank answer, read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ranked {
    /// The documents' indices with their relevance, most relevant first.
    pub results: Vec<(usize, f64)>,
    /// The tokens the upstream says it read, if it says.
    pub tokens: Option<u64>,
    /// Cohere's billed search units, if it says.
    pub search_units: Option<u64>,
}

/// Reads a rerank answer in Cohere's, Jina's, Together's or vLLM's shape
/// (`results`) or Voyage's (`data`), each item an `index` and a
/// `relevance_score` (or `score`), for a request of `documents` documents.
pub fn ranked(provider: &str, body: &[u8], documents: usize) -> Result<Ranked, GatewayError> {
    let bad = |why: &str| GatewayError::upstream_bad_response(provider, why);
    let v: Value =
        serde_json::from_slice(body).map_err(|_| bad("its rerank answer is not JSON"))?;
    let items = v
        .get("results")
        .or_else(|| v.get("data"))
        .and_then(Value::as_array)
        .ok_or_else(|| bad("its rerank answer has no `results`"))?;
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let index = item["index"]
            .as_u64()
            .map(|i| i as usize)
            .filter(|&i| i < documents)
            .ok_or_else(|| bad("a rerank result has no valid `index`"))?;
        let score = item
            .get("relevance_score")
            .or_else(|| item.get("score"))
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("a rerank result has no `relevance_score`"))?;
        results.push((index, score));
    }
    results.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let usage = &v["usage"];
    let tokens = usage["total_tokens"]
        .as_u64()
        .or_else(|| usage["prompt_tokens"].as_u64())
        .or_else(|| v["meta"]["tokens"]["input_tokens"].as_u64())
        .or_else(|| v["meta"]["billed_units"]["input_tokens"].as_u64());
    let search_units = v["meta"]["billed_units"]["search_units"].as_u64();
    Ok(Ranked {
        results,
        tokens,
        search_units,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyplex_types::validate;
    use serde_json::json;

    fn call_of(v: Value) -> (JsonMap, RerankMeta) {
        let body = v.as_object().unwrap().clone();
        let meta = validate::rerank(&body).unwrap();
        (body, meta)
    }

    #[test]
    fn the_body_keeps_the_clients_members_but_the_gateways() {
        let (body, meta) = call_of(json!({"model": "cohere/rerank-v3.5", "query": "q",
            "documents": ["a", {"text": "b"}], "top_n": 1, "return_documents": true,
            "max_tokens_per_doc": 512, "models": ["x"], "metadata": {"team": "t"}, "user": "u"}));
        let call = RerankCall {
            body: &body,
            meta: &meta,
        };
        let out: Value =
            serde_json::from_slice(&call.body("rerank-v3.5", "top_n").unwrap()).unwrap();
        assert_eq!(
            out,
            json!({"model": "rerank-v3.5", "query": "q", "documents": ["a", "b"], "top_n": 1, "max_tokens_per_doc": 512})
        );
        let out: Value = serde_json::from_slice(&call.body("rerank-2", "top_k").unwrap()).unwrap();
        assert_eq!(out["top_k"], 1);
        assert!(out.get("top_n").is_none());
    }

    #[test]
    fn each_api_gets_its_url_and_names() {
        use crate::{AuthStyle, Protocol};
        let auth = AuthStyle {
            header: http::HeaderName::from_static("authorization"),
            prefix: "Bearer ".into(),
        };
        let mut t = Target {
            provider: "voyage",
            base_url: "https://api.voyageai.com/v1",
            api_key: Some("k"),
            credential: None,
            auth: &auth,
            model: "rerank-2",
            extra_headers: &[],
            stream_usage: false,
            default_max_tokens: None,
            drop_params: false,
            api_version: None,
            sigv4: None,
        };
        let (body, meta) = call_of(
            json!({"model": "voyage/rerank-2", "query": "q", "documents": ["a", "b"], "top_n": 1}),
        );
        let call = RerankCall {
            body: &body,
            meta: &meta,
        };
        let req = crate::openai_compat::OpenAiCompat
            .rerank_request(&call, &t)
            .unwrap();
        assert_eq!(req.url, "https://api.voyageai.com/v1/rerank");
        assert_eq!(req.headers["authorization"], "Bearer k");
        let sent: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!((sent["top_k"].as_u64(), sent.get("top_n")), (Some(1), None));
        t.base_url = "https://api.cohere.com";
        t.model = "rerank-v3.5";
        let req = crate::cohere::Cohere.rerank_request(&call, &t).unwrap();
        assert_eq!(req.url, "https://api.cohere.com/v2/rerank");
        let sent: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(
            (sent["top_n"].as_u64(), sent["model"].as_str()),
            (Some(1), Some("rerank-v3.5"))
        );
        assert_eq!(
            crate::cohere::Cohere.search_unit_price("rerank-v3.5"),
            0.002
        );
        // Cohere's on Bedrock: `invoke`, no model in the body, api_version 2.
        t.base_url = "https://bedrock-runtime.us-east-1.amazonaws.com";
        t.model = "cohere.rerank-v3-5:0";
        let req = crate::bedrock::Bedrock.rerank_request(&call, &t).unwrap();
        assert_eq!(
            req.url,
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/cohere.rerank-v3-5%3A0/invoke"
        );
        let sent: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(
            sent,
            json!({"query": "q", "documents": ["a", "b"], "top_n": 1, "api_version": 2})
        );
        let r = crate::bedrock::Bedrock
            .rerank_answer(
                "bedrock",
                t.model,
                br#"{"id":"x","results":[{"index":0,"relevance_score":0.5}]}"#,
                2,
            )
            .unwrap();
        assert_eq!(r.search_units, Some(1));
        t.model = "amazon.rerank-v1:0";
        let e = crate::bedrock::Bedrock
            .rerank_request(&call, &t)
            .unwrap_err();
        assert_eq!(e.source, ErrorSource::Translation);
        // OpenAI's own API and the other protocols have none: refused before sending.
        t.base_url = "https://api.openai.com/v1";
        let e = crate::openai_compat::OpenAiCompat
            .rerank_request(&call, &t)
            .unwrap_err();
        assert_eq!(
            (e.source, e.param.as_deref()),
            (ErrorSource::Translation, Some("model"))
        );
        let e = crate::anthropic::Anthropic
            .rerank_request(&call, &t)
            .unwrap_err();
        assert_eq!(e.source, ErrorSource::Translation);
    }

    #[test]
    fn answers_in_each_providers_shape_are_read_most_relevant_first() {
        let cohere = br#"{"id":"x","results":[{"index":1,"relevance_score":0.9},{"index":0,"relevance_score":0.2}],"meta":{"api_version":{"version":"2"},"billed_units":{"search_units":1}}}"#;
        let r = ranked("cohere", cohere, 2).unwrap();
        assert_eq!(r.results, vec![(1, 0.9), (0, 0.2)]);
        assert_eq!((r.tokens, r.search_units), (None, Some(1)));
        let voyage = br#"{"object":"list","data":[{"relevance_score":0.1,"index":0},{"relevance_score":0.7,"index":2}],"model":"rerank-2","usage":{"total_tokens":26}}"#;
        let r = ranked("voyage", voyage, 3).unwrap();
        assert_eq!(r.results, vec![(2, 0.7), (0, 0.1)]);
        assert_eq!(r.tokens, Some(26));
        let together = br#"{"object":"rerank","results":[{"index":0,"relevance_score":0.5,"document":{}}],"usage":{"prompt_tokens":9,"total_tokens":9}}"#;
        assert_eq!(ranked("together", together, 1).unwrap().tokens, Some(9));
        let e = ranked("x", br#"{"results":[{"index":5,"relevance_score":1}]}"#, 2).unwrap_err();
        assert_eq!(e.status.as_u16(), 502);
        assert!(ranked("x", b"{}", 1).is_err());
    }

    #[test]
    fn bad_requests_name_the_field() {
        let param = |v: Value| {
            validate::rerank(v.as_object().unwrap())
                .unwrap_err()
                .param
                .unwrap()
        };
        assert_eq!(param(json!({"model": "m", "documents": ["a"]})), "query");
        assert_eq!(param(json!({"model": "m", "query": "q"})), "documents");
        assert_eq!(
            param(json!({"model": "m", "query": "q", "documents": []})),
            "documents"
        );
        assert_eq!(
            param(json!({"model": "m", "query": "q", "documents": ["a", 3]})),
            "documents[1]"
        );
        assert_eq!(
            param(json!({"model": "m", "query": "q", "documents": [{"title": "a"}]})),
            "documents[0].text"
        );
        assert_eq!(
            param(json!({"model": "m", "query": "q", "documents": ["a"], "top_n": 0})),
            "top_n"
        );
        assert_eq!(param(json!({"query": "q", "documents": ["a"]})), "model");
        assert_eq!(
            param(
                json!({"model": "m", "query": "q", "documents": ["a"], "return_documents": "yes"})
            ),
            "return_documents"
        );
    }
}
