//! `POST /v1/rerank` (and `/v2/rerank`, where Cohere's SDK posts): a
//! query and documents ranked by relevance, in Cohere's shape, over
//! Cohere's API, Cohere's rerankers on Bedrock and the OpenAI-compatible
//! providers that rerank (Jina, Voyage, Together, vLLM, Infinity ...), with
//! everything a request gets:
//! the key's models, limits and budget, routing (`provider/model`, bare
//! names, routes, `models` and `provider`), retries and failover, the
//! `x-polyplex-*` headers and one usage record.
//!
//! The answer is the same whichever provider served it: `results` most
//! relevant first (cut to `top_n`), each an `index` into the request's
//! documents and a `relevance_score`, and the document's `text` when
//! `return_documents` is set (filled in from the request, whatever the
//! upstream returns); Cohere's `meta.billed_units`; and a `usage` with the
//! tokens (the upstream's count, else polyplex's) and the cost in USD:
//! tokens at the model's input price, plus Cohere's search units at their
//! price.

use super::auth::Caller;
use super::handlers::{parse_json, ratelimit_headers, read_body, Call, Unanswered};
use super::passthrough::{admit_as_asked, unlisted};
use super::respond::{json_bytes, Served};
use super::{App, RequestId};
use crate::executor::attempt_loop;
use crate::routing::Facts;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use polyplex_providers::rerank::{Ranked, RerankCall};
use polyplex_providers::Endpoint;
use polyplex_types::validate::{self, RerankMeta};
use polyplex_types::{JsonMap, RequestBody, Usage};
use serde_json::{json, Value};

/// Above this much text, polyplex counts a rerank's tokens off the
/// serving threads.
const COUNT_INLINE: usize = 16 * 1024;

pub async fn rerank(
    State(app): State<App>,
    Extension(rid): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    Call::new(app, &rid, caller, Endpoint::Embeddings, "rerank")
        .run(req, answer)
        .await
}

async fn answer(call: &Call, req: Request, gone: &Unanswered<'_>) -> Response {
    let app = &call.app;
    let no_one = Served::default();
    let text = match read_body(app, req).await {
        Ok(b) => b,
        Err(e) => return call.fail("", false, e, &no_one),
    };
    let body = match parse_json(&text) {
        Ok(b) => b,
        Err(e) => return call.fail("", false, e, &no_one),
    };
    let meta = match validate::rerank(&body) {
        Ok(m) => m,
        Err(e) => {
            call.tag_from(&body);
            let model = body.get("model").and_then(Value::as_str).unwrap_or("");
            return call.fail(model, false, e, &no_one);
        }
    };
    call.tag(meta.user.clone(), meta.metadata.as_ref());
    gone.asked_for(&meta.model, false);
    // Cohere's rerank models are not in the catalog: a bare name is asked
    // of the Cohere providers.
    let (model, fallbacks) = if meta.model.starts_with("rerank") {
        unlisted(call, &meta.model, &meta.fallback_models, "cohere")
    } else {
        (meta.model.clone(), meta.fallback_models.clone())
    };
    let admitted = match admit_as_asked(call, &meta.model, &model, &fallbacks).await {
        Ok(a) => a,
        Err(e) => return call.fail(&meta.model, false, e, &no_one),
    };
    let access = admitted.as_ref().and_then(|a| a.spec.models.as_deref());
    let planned = {
        // Routing by cost prices no prompt here: the same documents go to
        // whichever deployment serves.
        let empty = RequestBody::parsed(Bytes::new(), JsonMap::new());
        let facts = Facts::new(&empty, Endpoint::Embeddings, false);
        let mut rng = rand::thread_rng();
        app.router()
            .plan(&model, &fallbacks, &meta.provider, access, &facts, &mut rng)
    };
    let plan = match planned {
        Ok(p) => p,
        Err(e) => return call.fail(&meta.model, false, e, &no_one),
    };
    let asked = RerankCall {
        body: &body,
        meta: &meta,
    };
    let asked = &asked;
    let outcome = attempt_loop(app, &plan, true, |d, g| async move {
        gone.attempt(&d, crate::executor::rerank_once(app, &d, g, asked))
            .await
    })
    .await;
    let served = outcome.trace;
    let (ranked, d) = match outcome.result {
        Ok(x) => x,
        Err(e) => return call.fail(&meta.model, false, e, &served),
    };
    let usage = Usage {
        prompt_tokens: match ranked.tokens {
            Some(n) => n,
            None => counted(&meta).await,
        },
        estimated: ranked.tokens.is_none(),
        ..Usage::default()
    };
    let cost = crate::usage::cost(app.catalog(), &d, &usage)
        + ranked.search_units.unwrap_or(0) as f64 * d.upstream.search_unit_price(&d.model);
    let out = answer_body(&call.rid, &d.model, &meta, &ranked, &usage, cost);
    let record = call.served_record(
        &meta.model,
        &d,
        usage,
        cost,
        served.attempts,
        admitted.as_ref(),
    );
    super::respond::record_served(app, &d, record);
    let mut resp = json_bytes(Bytes::from(out.to_string()));
    served.apply(&mut resp);
    if let Some(a) = &admitted {
        ratelimit_headers(&mut resp, &a.limits);
    }
    resp
}

/// The tokens of the query and documents, as polyplex counts them (for an
/// upstream that does not say).
async fn counted(meta: &RerankMeta) -> u64 {
    let size = meta.query.len() + meta.documents.iter().map(String::len).sum::<usize>();
    let count = |query: &str, documents: &[String]| {
        crate::tokens::count(query)
            + documents
                .iter()
                .map(|d| crate::tokens::count(d))
                .sum::<u64>()
    };
    if size <= COUNT_INLINE {
        return count(&meta.query, &meta.documents);
    }
    let (query, documents) = (meta.query.clone(), meta.documents.clone());
    tokio::task::spawn_blocking(move || count(&query, &documents))
        .await
        .unwrap_or(size.div_ceil(4) as u64)
}

/// The answer in Cohere's shape, with the gateway's `usage`.
fn answer_body(
    id: &str,
    model: &str,
    meta: &RerankMeta,
    ranked: &Ranked,
    usage: &Usage,
    cost: f64,
) -> Value {
    let keep = meta.top_n.map_or(usize::MAX, |n| n as usize);
    let results: Vec<Value> = ranked
        .results
        .iter()
        .take(keep)
        .map(|&(index, score)| {
            let mut r = json!({"index": index, "relevance_score": score});
            if meta.return_documents {
                r["document"] = json!({"text": meta.documents[index]});
            }
            r
        })
        .collect();
    let mut billed = json!({});
    if let Some(units) = ranked.search_units {
        billed["search_units"] = json!(units);
    }
    json!({
        "id": id,
        "object": "rerank",
        "model": model,
        "results": results,
        "meta": {"api_version": {"version": "2"}, "billed_units": billed},
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "total_tokens": usage.prompt_tokens,
            "cost": crate::usage::cost_json(cost),
        },
    })
}
