//! `/v1/conversations`: OpenAI's Conversations API over the gateway's store
//! ([`crate::conversations`]).
//!
//! | request | answer |
//! |---|---|
//! | `POST /v1/conversations` `{items?, metadata?}` | the conversation |
//! | `GET /v1/conversations/{id}` | the conversation |
//! | `POST /v1/conversations/{id}` `{metadata}` | the conversation, its metadata replaced |
//! | `DELETE /v1/conversations/{id}` | `conversation.deleted` (its items go too) |
//! | `GET /v1/conversations/{id}/items?order=&limit=&after=` | a page of items |
//! | `POST /v1/conversations/{id}/items` `{items}` | the items added |
//! | `GET /v1/conversations/{id}/items/{item}` | the item |
//! | `DELETE /v1/conversations/{id}/items/{item}` | the conversation |

use super::auth::Caller;
use super::handlers::{parse_json, read_body};
use super::respond::ApiError;
use super::App;
use crate::conversations::{checked_items, new_stem};
use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use polyplex_types::{validate, GatewayError, JsonMap};
use serde_json::{json, Value};

fn not_found(id: &str) -> GatewayError {
    GatewayError::not_found(format!("Conversation with id '{id}' not found."))
        .with_code("conversation_not_found")
}

fn store_failed(e: crate::store::StoreError) -> GatewayError {
    tracing::error!(error = %e, "conversations: the store failed");
    GatewayError::service_unavailable("The store did not answer; try again.")
}

/// The body's members, each checked against `allowed` (OpenAI refuses
/// others by name).
fn members(body: &JsonMap, allowed: &[&str]) -> Result<(), GatewayError> {
    for k in body.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(GatewayError::invalid_param(
                k.as_str(),
                format!("Unknown parameter: '{k}'."),
            )
            .with_code("unknown_parameter"));
        }
    }
    Ok(())
}

/// A body's `metadata`: an object of strings within OpenAI's limits (empty
/// when absent or null).
fn metadata(body: &JsonMap) -> Result<JsonMap, GatewayError> {
    Ok(validate::metadata(body)?.cloned().unwrap_or_default())
}

/// Every `/v1/conversations` request.
pub async fn serve(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    match answer(&app, &caller, req).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

async fn answer(app: &App, caller: &Caller, req: Request) -> Result<Value, GatewayError> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let rest = path.strip_prefix("/v1/conversations").unwrap_or("");
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let Some(store) = app.keys.store().cloned() else {
        return Err(GatewayError::invalid_request(
            "This gateway has no store to keep conversations in.",
        ));
    };
    let owner = caller.owner();
    let body = if method == Method::POST {
        let text = read_body(app, req).await?;
        if text.iter().all(u8::is_ascii_whitespace) {
            JsonMap::new()
        } else {
            parse_json(&text)?
        }
    } else {
        JsonMap::new()
    };
    let conversation = |id: &str| {
        let (store, owner, id) = (store.clone(), owner.clone(), id.to_string());
        async move {
            match store.conversation(&id, &owner).await {
                Ok(Some(c)) => Ok(c),
                Ok(None) => Err(not_found(&id)),
                Err(e) => Err(store_failed(e)),
            }
        }
    };
    match (&method, parts.as_slice()) {
        (&Method::POST, []) => {
            members(&body, &["items", "metadata", "safety_identifier"])?;
            let items = match body.get("items") {
                None | Some(Value::Null) => Vec::new(),
                Some(v) => checked_items(v, &new_stem())?,
            };
            let m = metadata(&body)?;
            let c = store
                .create_conversation(&owner, &m, &items)
                .await
                .map_err(store_failed)?;
            Ok(c.to_json())
        }
        (&Method::GET, [id]) => Ok(conversation(id).await?.to_json()),
        (&Method::POST, [id]) => {
            members(&body, &["metadata"])?;
            if !body.contains_key("metadata") {
                return Err(validate::missing("metadata"));
            }
            let m = metadata(&body)?;
            match store.set_conversation_metadata(id, &owner, &m).await {
                Ok(Some(c)) => Ok(c.to_json()),
                Ok(None) => Err(not_found(id)),
                Err(e) => Err(store_failed(e)),
            }
        }
        (&Method::DELETE, [id]) => match store.delete_conversation(id, &owner).await {
            Ok(true) => Ok(json!({"id": id, "object": "conversation.deleted", "deleted": true})),
            Ok(false) => Err(not_found(id)),
            Err(e) => Err(store_failed(e)),
        },
        (&Method::GET, [id, "items"]) => match store.conversation_items(id, &owner).await {
            Ok(Some(items)) => crate::responses::item_page(items, query.as_deref()),
            Ok(None) => Err(not_found(id)),
            Err(e) => Err(store_failed(e)),
        },
        (&Method::POST, [id, "items"]) => {
            members(&body, &["items"])?;
            let items = match body.get("items") {
                None | Some(Value::Null) => return Err(validate::missing("items")),
                Some(v) => checked_items(v, &new_stem())?,
            };
            match store.add_conversation_items(id, &owner, &items).await {
                Ok(true) => {
                    let id_of = |v: Option<&Value>| v.map_or(Value::Null, |v| v["id"].clone());
                    Ok(
                        json!({"object": "list", "data": items, "first_id": id_of(items.first()),
                        "last_id": id_of(items.last()), "has_more": false}),
                    )
                }
                Ok(false) => Err(not_found(id)),
                Err(e) => Err(store_failed(e)),
            }
        }
        (&Method::GET, [id, "items", item]) => {
            match store.conversation_item(id, &owner, item).await {
                Ok(Some(Some(found))) => Ok(found),
                Ok(Some(None)) => Err(item_not_found(item)),
                Ok(None) => Err(not_found(id)),
                Err(e) => Err(store_failed(e)),
            }
        }
        (&Method::DELETE, [id, "items", item]) => {
            match store.delete_conversation_item(id, &owner, item).await {
                Ok(Some(true)) => Ok(conversation(id).await?.to_json()),
                Ok(Some(false)) => Err(item_not_found(item)),
                Ok(None) => Err(not_found(id)),
                Err(e) => Err(store_failed(e)),
            }
        }
        (_, [] | [_] | [_, "items"] | [_, "items", _]) => Err(GatewayError::method_not_allowed()),
        _ => Err(GatewayError::not_found(format!(
            "Unknown request URL: {method} {path}. Please check the URL for typos."
        ))),
    }
}

fn item_not_found(item: &str) -> GatewayError {
    GatewayError::not_found(format!("Item with id '{item}' not found.")).with_code("item_not_found")
}
