//! Wire-protocol adapters.
//!
//! An adapter is pure translation: it turns the OpenAI-shaped request the
//! client sent into the upstream's HTTP request, and the upstream's reply (or
//! stream events) back into OpenAI's shape. It never does I/O; the gateway's
//! executor sends the request, applies timeouts and retries. So every adapter
//! is tested with fixture transcripts and no network.
//!
//! One folder per protocol. The ~150 providers that speak OpenAI's protocol
//! share [`openai_compat`] and differ only in data (base URL, auth header).

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod cohere;
pub mod completions;
pub mod custom_tools;
pub mod gemini;
pub mod openai_compat;
pub mod reply;
pub mod rerank;
pub mod sse;
mod translate;
pub mod vertex;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use polyplex_types::{GatewayError, JsonMap, RequestBody, Usage};
pub use reply::{RawReply, Reply};
pub use translate::{join_embeddings, split_embedding_inputs, tools_to_function_call, usage_chunk};

/// Which OpenAI endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// A client's own Messages request ([`Protocol::messages_request`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessagesCall {
    /// `POST /v1/messages`, streamed or not.
    Create { stream: bool },
    /// `POST /v1/messages/count_tokens`.
    Count,
}

/// How a provider wants its credential presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthStyle {
    pub header: HeaderName,
    /// Written before the key, e.g. `"Bearer "`.
    pub prefix: String,
}

impl AuthStyle {
    pub fn bearer() -> Self {
        AuthStyle {
            header: http::header::AUTHORIZATION,
            prefix: "Bearer ".into(),
        }
    }
}

/// The upstream deployment a request is being sent to.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// Provider name (for messages).
    pub provider: &'a str,
    pub base_url: &'a str,
    pub api_key: Option<&'a str>,
    /// `auth.prefix` + `api_key` as a header value, when the caller built it
    /// once (else it is built per request).
    pub credential: Option<&'a HeaderValue>,
    pub auth: &'a AuthStyle,
    /// The model name the upstream knows.
    pub model: &'a str,
    pub extra_headers: &'a [(HeaderName, HeaderValue)],
    /// Whether to ask for `stream_options.include_usage` upstream (some
    /// OpenAI-compatible servers reject it).
    pub stream_usage: bool,
    /// `max_tokens` for protocols that require one when the client sent none
    /// (the catalog's output limit for the model).
    pub default_max_tokens: Option<u64>,
    /// Drop parameters the protocol cannot honour instead of refusing them.
    pub drop_params: bool,
    /// The API version for protocols that put one in the URL (Azure).
    pub api_version: Option<&'a str>,
    /// AWS SigV4 credentials and region, for Bedrock without an API key.
    pub sigv4: Option<&'a bedrock::SigV4>,
}

/// An upstream HTTP request, ready to send.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Parameters left out because the protocol cannot honour them (only with `drop_params`).
    pub dropped: Vec<String>,
}

/// One item a stream decoder produces.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// An OpenAI chunk, as JSON text, to be sent as one `data:` event.
    Chunk(Bytes),
    /// The upstream's usage chunk, read, so the gateway can add the cost
    /// (and drop it if the client did not ask for usage). An OpenAI-protocol
    /// upstream's chunk stays raw text (only `usage` is edited).
    Usage(Usage, Reply),
    /// The upstream signalled the end of the stream.
    Done,
}

/// What a decoder knows at the end of a stream whose upstream sent no usage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamSummary {
    pub id: Option<String>,
    pub model: Option<String>,
    pub created: Option<u64>,
    /// All generated text (content, tool-call arguments) for token counting.
    pub completion_text: String,
    /// The thinking's text, when the model thought and its upstream does
    /// not count reasoning tokens apart (Claude; empty when redacted).
    pub reasoning: Option<String>,
}

/// A stateful translator of one upstream stream.
pub trait StreamDecoder: Send {
    /// Handles one SSE event; appends 0..n items to `out`.
    fn on_event(
        &mut self,
        event: &sse::Event,
        out: &mut Vec<StreamItem>,
    ) -> Result<(), GatewayError>;
    /// The upstream closed the stream. An error if it ended before saying it was done.
    fn finish(&mut self, out: &mut Vec<StreamItem>) -> Result<(), GatewayError>;
    /// Whether the upstream reported usage during the stream.
    fn saw_usage(&self) -> bool;
    /// Whether the model thought in this stream without its upstream
    /// counting the reasoning tokens apart (Claude's extended thinking): the
    /// gateway estimates them from the [`StreamSummary`].
    fn reasoned(&self) -> bool {
        false
    }
    /// Id, model and the generated text, for a usage chunk the gateway must write itself.
    fn summary(&self) -> StreamSummary;
}

/// A wire protocol.
pub trait Protocol: Send + Sync {
    fn name(&self) -> &'static str;
    /// Builds the upstream request for `body` (a validated OpenAI request).
    fn build(
        &self,
        endpoint: Endpoint,
        body: &JsonMap,
        stream: bool,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError>;
    /// [`Protocol::build`] for the client's body as it came: an adapter
    /// that would send the same JSON forwards the client's bytes instead of
    /// encoding the tree again (and may not need the tree at all).
    fn build_from(
        &self,
        endpoint: Endpoint,
        body: &RequestBody,
        stream: bool,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        self.build(endpoint, body.map(), stream, target)
    }
    /// Parses a 2xx reply to `request` into an OpenAI-shaped response and its usage.
    fn parse(
        &self,
        endpoint: Endpoint,
        provider: &str,
        request: &JsonMap,
        body: &[u8],
    ) -> Result<(JsonMap, Option<Usage>), GatewayError>;
    /// [`Protocol::parse`] for the gateway's unary path: adapters whose
    /// upstream already answers in OpenAI's shape keep the bytes
    /// ([`Reply::Raw`]) instead of decoding and re-encoding them.
    fn parse_reply(
        &self,
        endpoint: Endpoint,
        provider: &str,
        request: &RequestBody,
        body: &Bytes,
    ) -> Result<(Reply, Option<Usage>), GatewayError> {
        self.parse(endpoint, provider, request.map(), body)
            .map(|(m, u)| (Reply::Map(m), u))
    }
    /// Maps an upstream error reply to a gateway error.
    fn error(&self, provider: &str, status: StatusCode, body: &[u8]) -> GatewayError;
    /// [`Protocol::error`] for protocols that name the error in a header
    /// (Bedrock's `x-amzn-ErrorType`).
    fn error_with_headers(
        &self,
        provider: &str,
        status: StatusCode,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> GatewayError {
        self.error(provider, status, body)
    }
    /// The most inputs one embeddings request to `model` may carry, where
    /// the upstream takes fewer than OpenAI's clients may send (Bedrock's
    /// Titan models: one). The gateway then sends the inputs in parts and
    /// joins the answers ([`split_embedding_inputs`], [`join_embeddings`]).
    fn embedding_inputs_per_request(&self, _model: &str) -> Option<usize> {
        None
    }
    /// Whether the upstream API has OpenAI's legacy completions endpoint
    /// (else the gateway serves completions through its chat API,
    /// [`completions::ViaChat`]).
    fn answers_completions(&self) -> bool {
        false
    }
    /// Whether a completions request may carry one prompt only (a chat
    /// API's). The gateway then answers a unary request with several a
    /// prompt at a time and joins the answers
    /// ([`completions::split_prompts`], [`join_choices`]).
    fn one_prompt_per_request(&self) -> bool {
        false
    }
    /// Whether a chat request to `model` may ask for several choices (`n`);
    /// where not, the gateway asks for the choices one request each and
    /// joins the answers ([`split_choices`]; a stream's, the executor's
    /// `apart` module).
    fn answers_n(&self, _model: &str) -> bool {
        true
    }
    /// What one web search the provider runs for `model` costs, in USD (the
    /// searches an answer's usage counts, [`Usage::web_searches`]).
    fn web_search_price(&self, _model: &str) -> f64 {
        0.0
    }
    /// The upstream request for a rerank ([`rerank`]); refused before
    /// anything is sent where the protocol has no rerank endpoint.
    fn rerank_request(
        &self,
        _call: &rerank::RerankCall<'_>,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        Err(rerank::not_offered(target, self.name()))
    }
    /// Reads a rerank answer of `model` to a request of `documents`
    /// documents ([`rerank::ranked`] unless overridden).
    fn rerank_answer(
        &self,
        provider: &str,
        _model: &str,
        body: &[u8],
        documents: usize,
    ) -> Result<rerank::Ranked, GatewayError> {
        rerank::ranked(provider, body, documents)
    }
    /// What one search unit (Cohere's rerank billing: a query with up to
    /// 100 documents) costs for `model`, in USD.
    fn search_unit_price(&self, _model: &str) -> f64 {
        0.0
    }
    /// Whether a client's own Anthropic Messages request for `model` goes
    /// to this API as it is ([`anthropic::Native`], [`Protocol::messages_request`]):
    /// Anthropic's API, and Claude on Vertex AI and Bedrock; `count`: its
    /// `count_tokens` request.
    fn carries_messages(&self, _model: &str, _count: bool) -> bool {
        false
    }
    /// The upstream request for a client's own Messages request (or its
    /// `count_tokens` request), where [`Protocol::carries_messages`].
    fn messages_request(
        &self,
        _native: &anthropic::Native,
        _call: MessagesCall,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        Err(GatewayError::internal(format!(
            "provider `{}` does not take Anthropic's Messages requests as they are",
            target.provider
        )))
    }
    /// Whether a client's own Gemini `generateContent` request for `model`
    /// goes to this API as it is ([`Protocol::generate_request`]): Gemini's
    /// API, and Gemini models on Vertex AI.
    fn carries_generate(&self, _model: &str) -> bool {
        false
    }
    /// The upstream request for a client's own `generateContent` body (its
    /// model, if it names one, taken out: the URL names the deployment's),
    /// where [`Protocol::carries_generate`].
    fn generate_request(
        &self,
        _body: Bytes,
        _stream: bool,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        Err(GatewayError::internal(format!(
            "provider `{}` does not take Gemini's generateContent requests as they are",
            target.provider
        )))
    }
    /// The upstream request for a client's own Gemini `countTokens` body
    /// (its contents, or a `generateContentRequest`), where
    /// [`Protocol::carries_generate`]; its answer is Gemini's as it is.
    fn generate_count_request(
        &self,
        _body: &JsonMap,
        target: &Target<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        Err(GatewayError::internal(format!(
            "provider `{}` does not count Gemini requests",
            target.provider
        )))
    }
    /// A `count_tokens` answer as Anthropic's API gives it
    /// (`{"input_tokens": n}`), from this API's own.
    fn messages_count_answer(&self, _provider: &str, body: Bytes) -> Result<Bytes, GatewayError> {
        Ok(body)
    }
    /// One event of a passed-through Messages stream as Anthropic's API
    /// sends it (Bedrock wraps each in a `chunk`); an error the stream
    /// raised instead.
    fn messages_event(
        &self,
        _provider: &str,
        event: sse::Event,
    ) -> Result<sse::Event, GatewayError> {
        Ok(event)
    }
    /// The parser of this protocol's stream framing (SSE unless overridden).
    fn stream_parser(&self) -> sse::Parser {
        sse::Parser::new()
    }
    fn stream_decoder(
        &self,
        endpoint: Endpoint,
        provider: &str,
        model: &str,
        request: &RequestBody,
    ) -> Box<dyn StreamDecoder>;
}

/// A parameter the protocol cannot honour: dropped (and named) under
/// `drop_params`, else a 400 naming it.
pub fn unsupported(
    param: &str,
    provider: &str,
    target: &Target<'_>,
    dropped: &mut Vec<String>,
) -> Result<(), GatewayError> {
    if target.drop_params {
        dropped.push(param.to_string());
        return Ok(());
    }
    let message = if param == "n" {
        // What reaches an adapter: more than polyplex asks apart.
        format!("The parameter 'n' is not supported by provider `{}` ({provider} protocol) above {MOST_CHOICES_APART} (polyplex asks for the choices one request each, at most {MOST_CHOICES_APART}). Lower it, or set drop_params to drop it.", target.provider)
    } else {
        format!("The parameter '{param}' is not supported by provider `{}` ({provider} protocol). Remove it, or set drop_params to drop it.", target.provider)
    };
    Err(GatewayError::invalid_param(param, message).with_code("unsupported_parameter"))
}

/// The most choices (`n`) polyplex asks one at a time of a provider that
/// gives one per request ([`Protocol::answers_n`]).
pub const MOST_CHOICES_APART: u64 = 16;

/// A chat request for `n` > 1 choices as `n` requests for one each (for a
/// provider without `n`; [`MOST_CHOICES_APART`] at most), or `None` when it
/// asks for one or for more.
pub fn split_choices(body: &JsonMap, n: u64) -> Option<Vec<JsonMap>> {
    if !(2..=MOST_CHOICES_APART).contains(&n) {
        return None;
    }
    let mut one = body.clone();
    one.remove("n");
    Some(vec![one; n as usize])
}

/// A request as the upstream takes it, in parts ([`split_request`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Parts {
    pub bodies: Vec<JsonMap>,
    /// Choices in each part's answer: a merged stream numbers part `i`'s
    /// choice `j` as `i * choices_each + j`, as OpenAI numbers the choices
    /// of several prompts.
    pub choices_each: u64,
}

/// The parts a request goes in to an upstream that takes less per request
/// than it asks, or `None` when it goes whole: an embeddings request's
/// inputs a group at a time ([`Protocol::embedding_inputs_per_request`],
/// never streamed), a completions request's prompts one each
/// ([`Protocol::one_prompt_per_request`]), and a chat or completions
/// request's `n` choices one each ([`Protocol::answers_n`]; up to
/// [`MOST_CHOICES_APART`], and for completions only when `best_of` asks no
/// more than `n`). A stream goes in at most [`MOST_CHOICES_APART`] parts
/// (each is an upstream stream held open to the end); more, and it goes
/// whole, for the adapter to refuse what it cannot carry.
pub fn split_request(
    protocol: &dyn Protocol,
    endpoint: Endpoint,
    model: &str,
    body: &JsonMap,
    n: u64,
    stream: bool,
) -> Option<Parts> {
    let whole = |bodies| Parts {
        bodies,
        choices_each: n.max(1),
    };
    let choices_apart = n > 1 && !protocol.answers_n(model);
    let parts = match endpoint {
        Endpoint::Embeddings => protocol
            .embedding_inputs_per_request(model)
            .and_then(|per| split_embedding_inputs(body, per))
            .map(whole),
        Endpoint::Chat if choices_apart => split_choices(body, n).map(|bodies| Parts {
            bodies,
            choices_each: 1,
        }),
        Endpoint::Completions => {
            let prompts = protocol
                .one_prompt_per_request()
                .then(|| completions::split_prompts(body))
                .flatten();
            let best_of = body.get("best_of").and_then(polyplex_types::integer);
            if choices_apart && n <= MOST_CHOICES_APART && best_of.is_none_or(|b| b <= n as i64) {
                let bodies = prompts
                    .unwrap_or_else(|| vec![body.clone()])
                    .iter()
                    .flat_map(|p| split_choices(p, n).unwrap_or_default())
                    .map(|mut b| {
                        b.remove("best_of");
                        b
                    })
                    .collect();
                Some(Parts {
                    bodies,
                    choices_each: 1,
                })
            } else {
                prompts.map(whole)
            }
        }
        Endpoint::Chat => None,
    };
    parts.filter(|p| !stream || p.bodies.len() as u64 <= MOST_CHOICES_APART)
}

/// The answers to a request's parts ([`split_choices`]'s, or a prompt list's,
/// [`completions::split_prompts`]) as OpenAI gives one request's: their
/// choices in order, numbered on (choice `j` of part `i` is `i * n + j`), and
/// the token counts added up (none when a part had none: the gateway
/// counts then).
pub fn join_choices(parts: Vec<(Reply, Option<Usage>)>) -> (Reply, Option<Usage>) {
    translate::join_indexed(parts, "choices", Usage::to_json)
}

/// Content type, accept, the credential in the provider's header, extra headers.
pub fn headers(target: &Target<'_>, stream: bool) -> Result<HeaderMap, GatewayError> {
    let mut headers = HeaderMap::with_capacity(4 + target.extra_headers.len());
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::ACCEPT,
        HeaderValue::from_static(if stream {
            "text/event-stream"
        } else {
            "application/json"
        }),
    );
    if let Some(v) = target.credential {
        headers.insert(target.auth.header.clone(), v.clone());
    } else if let Some(key) = target.api_key.filter(|k| !k.is_empty()) {
        let mut v =
            HeaderValue::try_from(format!("{}{}", target.auth.prefix, key)).map_err(|_| {
                GatewayError::internal(format!(
                    "the API key configured for provider `{}` is not a valid header value",
                    target.provider
                ))
            })?;
        v.set_sensitive(true);
        headers.insert(target.auth.header.clone(), v);
    }
    for (k, v) in target.extra_headers {
        headers.insert(k.clone(), v.clone());
    }
    Ok(headers)
}

/// A base URL's host, lower-cased (how a provider's API is known when
/// its protocol alone does not say: OpenAI's own, Groq's, ...).
pub fn host_of(base_url: &str) -> Option<String> {
    base_url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_ascii_lowercase))
}

/// Joins a base URL and a path with exactly one slash.
pub fn join_url(base: &str, path: &str) -> String {
    let mut s = String::with_capacity(base.len() + path.len() + 1);
    s.push_str(base.trim_end_matches('/'));
    s.push('/');
    s.push_str(path.trim_start_matches('/'));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::sync::Arc;

    /// A deployment for adapter tests: provider `p`, key `k`, the
    /// catalog's output limit 1000.
    pub(crate) fn test_target<'a>(
        auth: &'a AuthStyle,
        base_url: &'a str,
        model: &'a str,
        drop_params: bool,
    ) -> Target<'a> {
        Target {
            provider: "p",
            base_url,
            api_key: Some("k"),
            credential: None,
            auth,
            model,
            extra_headers: &[],
            stream_usage: true,
            default_max_tokens: Some(1000),
            drop_params,
            api_version: None,
            sigv4: None,
        }
    }

    /// Every translating protocol, with a model of its own, as
    /// `(name, protocol, base URL, model)`.
    fn translating() -> Vec<(&'static str, Box<dyn Protocol>, &'static str, &'static str)> {
        const VERTEX: &str =
            "https://us-east5-aiplatform.googleapis.com/v1/projects/p/locations/us-east5";
        vec![
            (
                "anthropic",
                Box::new(anthropic::Anthropic),
                "https://api.anthropic.com",
                "claude-sonnet-4-5",
            ),
            (
                "gemini",
                Box::new(gemini::Gemini),
                "https://generativelanguage.googleapis.com",
                "gemini-2.5-flash",
            ),
            (
                "cohere",
                Box::new(cohere::Cohere),
                "https://api.cohere.com",
                "command-a-03-2025",
            ),
            (
                "bedrock",
                Box::new(bedrock::Bedrock),
                "https://bedrock-runtime.us-east-1.amazonaws.com",
                "anthropic.claude-3-5-haiku-20241022-v1:0",
            ),
            (
                "vertex gemini",
                Box::new(vertex::Vertex),
                VERTEX,
                "gemini-2.5-flash",
            ),
            (
                "vertex claude",
                Box::new(vertex::Vertex),
                VERTEX,
                "claude-sonnet-4-5@20250929",
            ),
        ]
    }

    fn build(
        p: &dyn Protocol,
        base_url: &str,
        model: &str,
        body: Value,
        drop_params: bool,
    ) -> Result<(Value, Vec<String>), GatewayError> {
        let auth = AuthStyle::bearer();
        let target = test_target(&auth, base_url, model, drop_params);
        let body = RequestBody::from_map(body.as_object().cloned().unwrap_or_default());
        let req = p.build_from(Endpoint::Chat, &body, false, &target)?;
        let sent = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        Ok((sent, req.dropped))
    }

    #[test]
    fn requests_go_in_parts_where_the_upstream_takes_less() {
        let body = |v: Value| v.as_object().unwrap().clone();
        let claude: Arc<dyn Protocol> = Arc::new(anthropic::Anthropic);
        let gpt: Arc<dyn Protocol> = Arc::new(openai_compat::OpenAiCompat);
        let split = |p: &Arc<dyn Protocol>, e: Endpoint, b: &JsonMap, stream: bool| {
            let n = b.get("n").and_then(Value::as_u64).unwrap_or(1);
            split_request(p.as_ref(), e, "m", b, n, stream)
                .map(|parts| (parts.bodies, parts.choices_each))
        };
        // Chat: the choices one each, streamed or not; one choice, or a
        // protocol with `n`, whole.
        let chat = body(json!({"messages": [], "n": 3}));
        for stream in [false, true] {
            let (bodies, each) = split(&claude, Endpoint::Chat, &chat, stream).unwrap();
            assert_eq!((bodies.len(), each), (3, 1));
        }
        assert!(split(&gpt, Endpoint::Chat, &chat, true).is_none());
        assert!(split(
            &claude,
            Endpoint::Chat,
            &body(json!({"messages": []})),
            true
        )
        .is_none());
        // Completions through Claude's chat: prompts times choices, in
        // OpenAI's order (prompt-major), `best_of` no more than `n` gone.
        let via_claude: Arc<dyn Protocol> = Arc::new(completions::ViaChat(claude.clone()));
        let text = body(json!({"prompt": ["a", "b"], "n": 2, "best_of": 2}));
        let (bodies, each) = split(&via_claude, Endpoint::Completions, &text, true).unwrap();
        let asked: Vec<_> = bodies
            .iter()
            .map(|b| {
                (
                    b["prompt"].as_str().unwrap(),
                    b.contains_key("n") || b.contains_key("best_of"),
                )
            })
            .collect();
        assert_eq!(
            (asked, each),
            (
                vec![("a", false), ("a", false), ("b", false), ("b", false)],
                1
            )
        );
        // `best_of` above `n` stays, to be refused by name: the prompts split, `n` kept.
        let more = body(json!({"prompt": ["a", "b"], "n": 2, "best_of": 3}));
        let (bodies, each) = split(&via_claude, Endpoint::Completions, &more, false).unwrap();
        assert_eq!(
            (bodies.len(), each, bodies[0]["n"].clone()),
            (2, 2, json!(2))
        );
        // A chat API with `n`: a prompt each, its choices numbered on from the part's.
        let via_gpt: Arc<dyn Protocol> = Arc::new(completions::ViaChat(gpt.clone()));
        let (bodies, each) = split(&via_gpt, Endpoint::Completions, &text, true).unwrap();
        assert_eq!((bodies.len(), each), (2, 2));
        // A stream in more parts than polyplex holds open goes whole (to be refused).
        let many =
            body(json!({"prompt": (0..9).map(|i| i.to_string()).collect::<Vec<_>>(), "n": 2}));
        assert_eq!(
            split(&via_claude, Endpoint::Completions, &many, false)
                .unwrap()
                .0
                .len(),
            18
        );
        assert!(split(&via_claude, Endpoint::Completions, &many, true).is_none());
        let too_many = body(json!({"messages": [], "n": MOST_CHOICES_APART + 1}));
        assert!(split(&claude, Endpoint::Chat, &too_many, false).is_none());
    }

    #[test]
    fn several_choices_asked_apart_and_joined() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 3})
            .as_object()
            .unwrap()
            .clone();
        let parts = split_choices(&body, 3).unwrap();
        assert_eq!(parts.len(), 3);
        assert!(parts
            .iter()
            .all(|p| !p.contains_key("n") && p["messages"] == body["messages"]));
        assert!(split_choices(&body, 1).is_none());
        assert!(split_choices(&body, MOST_CHOICES_APART + 1).is_none());
        let mut streamed = body.clone();
        streamed.insert("stream".into(), json!(true));
        // A stream's choices are streamed apart too (merged by the gateway).
        let parts = split_choices(&streamed, 2).unwrap();
        assert!(parts
            .iter()
            .all(|p| p["stream"] == json!(true) && !p.contains_key("n")));
        let answer = |text: &str| {
            let m = json!({"id": "a", "object": "chat.completion", "choices": [{"index": 0,
                "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]});
            let u = Usage {
                prompt_tokens: 5,
                completion_tokens: 2,
                ..Usage::default()
            };
            (Reply::Map(m.as_object().unwrap().clone()), Some(u))
        };
        let (joined, usage) = join_choices(vec![answer("red"), answer("blue")]);
        let m = joined.into_map();
        let choices: Vec<(u64, &str)> = m["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["index"].as_u64().unwrap(),
                    c["message"]["content"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(choices, vec![(0, "red"), (1, "blue")]);
        assert_eq!(
            usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((10, 4))
        );
        assert_eq!(m["usage"]["total_tokens"], 14);
        // Claude, Bedrock and Cohere give one choice a request; Vertex's Gemini several.
        assert!(!anthropic::Anthropic.answers_n("claude-sonnet-4-5"));
        assert!(!vertex::Vertex.answers_n("claude-haiku-4-5@20251001"));
        assert!(vertex::Vertex.answers_n("gemini-2.5-flash"));
        assert!(gemini::Gemini.answers_n("gemini-2.5-flash"));
    }

    /// A parameter at the value that asks for nothing beyond OpenAI's
    /// default is honoured by every protocol, with or without an equivalent
    /// of its own: neither refused nor named as dropped. The same parameter
    /// asking for something a protocol cannot do is refused by name.
    #[test]
    fn parameters_that_ask_nothing_are_honoured_everywhere() {
        let honoured = [
            ("n", json!(1)),
            ("n", json!(1.0)),
            ("presence_penalty", json!(0)),
            ("frequency_penalty", json!(0.0)),
            ("logit_bias", json!({})),
            ("top_logprobs", json!(0)),
            ("logprobs", json!(false)),
            ("parallel_tool_calls", json!(true)),
            ("store", json!(false)),
            ("metadata", json!({})),
            // The gateway's own tags, for the usage record.
            ("metadata", json!({"team": "a"})),
            ("modalities", json!(["text"])),
            ("service_tier", json!("auto")),
            ("service_tier", json!("default")),
            ("seed", Value::Null),
        ];
        let refused = [
            ("logit_bias", json!({"50256": -100})),
            ("store", json!(true)),
            ("modalities", json!(["text", "audio"])),
            ("service_tier", json!("flex")),
            ("logprobs", json!(true)),
            ("n", json!(2)),
            // As a float too (OpenAI's integer fields take `2.0`): once
            // let through as if absent, a choice silently lost.
            ("n", json!(2.0)),
        ];
        for (name, p, base, model) in translating() {
            let plain = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            for (k, v) in &honoured {
                let mut body = plain.clone();
                body[k] = v.clone();
                let (sent, dropped) = build(p.as_ref(), base, model, body, false)
                    .unwrap_or_else(|e| panic!("{name}: {k} = {v}: {}", e.message));
                assert!(dropped.is_empty(), "{name}: {k} = {v}: dropped {dropped:?}");
                let (plain_sent, _) = build(p.as_ref(), base, model, plain.clone(), false).unwrap();
                // Where the protocol has the parameter, it may pass the
                // value on (Gemini's `candidateCount`, Cohere's penalties);
                // where it has none, the body is the one without it.
                let translated = ["n", "presence_penalty", "frequency_penalty"].contains(k)
                    || (*k == "service_tier" && name == "anthropic");
                if !translated {
                    assert_eq!(
                        sent, plain_sent,
                        "{name}: {k} = {v} changed the upstream body"
                    );
                }
            }
            for (k, v) in &refused {
                if (*k == "n" || *k == "logprobs") && name.contains("gemini") {
                    continue; // candidateCount, responseLogprobs
                }
                if *k == "logprobs" && name.contains("cohere") {
                    continue; // its own `logprobs`
                }
                let mut body = plain.clone();
                body[k] = v.clone();
                let e = build(p.as_ref(), base, model, body.clone(), false)
                    .err()
                    .unwrap_or_else(|| panic!("{name}: {k} = {v} was not refused"));
                assert_eq!(
                    (e.status.as_u16(), e.param.as_deref(), e.code.as_deref()),
                    (400, Some(*k), Some("unsupported_parameter")),
                    "{name}: {k} = {v}"
                );
                let (_, dropped) = build(p.as_ref(), base, model, body, true).unwrap();
                assert_eq!(
                    dropped,
                    vec![k.to_string()],
                    "{name}: {k} = {v} under drop_params"
                );
            }
        }
    }

    /// A conversation with nothing to answer (only system messages, or
    /// empty ones) is refused naming `messages` by the protocols that need a
    /// user or assistant turn, before any upstream call; Cohere takes it.
    #[test]
    fn a_conversation_without_turns_is_refused_naming_messages() {
        for messages in [
            json!([{"role": "system", "content": "Be brief."}]),
            json!([{"role": "developer", "content": "Be brief."}, {"role": "user", "content": ""}]),
            json!([{"role": "user", "content": []}]),
        ] {
            for (name, p, base, model) in translating() {
                let body = json!({"model": "m", "messages": messages});
                let r = build(p.as_ref(), base, model, body, false);
                if name == "cohere" {
                    assert!(r.is_ok(), "{name}: {messages}");
                    continue;
                }
                let e = r
                    .err()
                    .unwrap_or_else(|| panic!("{name}: {messages} was sent"));
                assert_eq!(
                    (e.status.as_u16(), e.param.as_deref()),
                    (400, Some("messages")),
                    "{name}: {messages}"
                );
                assert!(
                    e.message.contains("at least one user or assistant message"),
                    "{}",
                    e.message
                );
            }
        }
    }

    /// OpenAI's `service_tier` on Anthropic's API: "default" (the standard
    /// tier only) is Anthropic's "standard_only"; "auto" is Anthropic's
    /// default and is left out; Vertex AI's Claude has no tiers.
    #[test]
    fn service_tier_reaches_anthropic_as_its_own() {
        let body = |tier: &str| json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "service_tier": tier});
        let anthropic = anthropic::Anthropic;
        let (sent, _) = build(
            &anthropic,
            "https://api.anthropic.com",
            "claude-sonnet-4-5",
            body("default"),
            false,
        )
        .unwrap();
        assert_eq!(sent["service_tier"], "standard_only");
        let (sent, _) = build(
            &anthropic,
            "https://api.anthropic.com",
            "claude-sonnet-4-5",
            body("auto"),
            false,
        )
        .unwrap();
        assert!(sent.get("service_tier").is_none());
        let (name, vertex, base, model) = translating().pop().unwrap();
        assert_eq!(name, "vertex claude");
        let (sent, _) = build(vertex.as_ref(), base, model, body("default"), false).unwrap();
        assert!(sent.get("service_tier").is_none());
    }

    /// No chat-only protocol has the completions endpoint itself; through
    /// [`completions::ViaChat`] each gets the prompt as its own chat request.
    #[test]
    fn every_chat_only_protocol_answers_completions_through_chat() {
        let auth = AuthStyle::bearer();
        for (name, p, base_url, model) in translating() {
            assert!(!p.answers_completions(), "{name}");
            let target = test_target(&auth, base_url, model, false);
            let body = json!({"model": "m", "prompt": "Complete this sentence", "max_tokens": 7})
                .as_object()
                .cloned()
                .unwrap_or_default();
            let e = p
                .build(Endpoint::Completions, &body, false, &target)
                .unwrap_err();
            assert_eq!(e.code.as_deref(), Some("unsupported_endpoint"), "{name}");
            let via = completions::ViaChat(std::sync::Arc::from(p));
            assert!(via.one_prompt_per_request());
            for stream in [false, true] {
                let req = via
                    .build(Endpoint::Completions, &body, stream, &target)
                    .unwrap_or_else(|e| panic!("{name}: {}", e.message));
                let sent = String::from_utf8_lossy(&req.body);
                assert!(sent.contains("Complete this sentence"), "{name}: {sent}");
                assert!(!sent.contains("prompt"), "{name}: {sent}");
            }
        }
        assert!(openai_compat::OpenAiCompat.answers_completions());
        assert!(azure::Azure.answers_completions());
    }

    #[test]
    fn join_url_one_slash() {
        assert_eq!(
            super::join_url("http://x/v1/", "/chat/completions"),
            "http://x/v1/chat/completions"
        );
        assert_eq!(
            super::join_url("http://x/v1", "chat/completions"),
            "http://x/v1/chat/completions"
        );
    }
}
