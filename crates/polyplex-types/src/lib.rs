//! OpenAI wire-level types shared by every polyplex crate: the one error type
//! ([`GatewayError`]), usage accounting ([`Usage`]) and validation of the
//! OpenAI request bodies polyplex accepts ([`validate`]).
//!
//! Request bodies are kept as JSON maps (`serde_json::Map`, insertion ordered)
//! rather than closed structs, so a parameter polyplex does not know is never
//! lost on the way to an OpenAI-protocol upstream. Validation reads the known
//! fields and names the offending one in every error.

pub mod error;
pub mod usage;
pub mod validate;

pub use error::{ErrorSource, GatewayError};
pub use usage::Usage;

/// A JSON object, insertion ordered.
pub type JsonMap = serde_json::Map<String, serde_json::Value>;
