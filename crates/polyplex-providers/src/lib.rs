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

pub mod openai_compat;
pub mod sse;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use polyplex_types::{GatewayError, JsonMap, Usage};

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
    pub auth: &'a AuthStyle,
    /// The model name the upstream knows.
    pub model: &'a str,
    pub extra_headers: &'a [(HeaderName, HeaderValue)],
    /// Whether to ask for `stream_options.include_usage` upstream (some
    /// OpenAI-compatible servers reject it).
    pub stream_usage: bool,
}

/// An upstream HTTP request, ready to send.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One item a stream decoder produces.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// An OpenAI chunk, as JSON text, to be sent as one `data:` event.
    Chunk(Bytes),
    /// The upstream's usage chunk, parsed, so the gateway can add the cost
    /// (and drop it if the client did not ask for usage).
    Usage(Usage, JsonMap),
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
    /// Parses a 2xx reply into an OpenAI-shaped response and its usage.
    fn parse(
        &self,
        endpoint: Endpoint,
        provider: &str,
        body: &[u8],
    ) -> Result<(JsonMap, Option<Usage>), GatewayError>;
    /// Maps an upstream error reply to a gateway error.
    fn error(&self, provider: &str, status: StatusCode, body: &[u8]) -> GatewayError;
    fn stream_decoder(&self, endpoint: Endpoint, provider: &str) -> Box<dyn StreamDecoder>;
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
