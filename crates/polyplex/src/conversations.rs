//! OpenAI's Conversations API (`/v1/conversations`): conversations kept in
//! the gateway's store, each a list of items (messages, tool calls and
//! their outputs, reasoning). A Responses request that names one with
//! `conversation` is answered after its items, and its own input and output
//! join them. Like kept responses, conversations are the gateway's, so they
//! work with every provider, and each belongs to the caller that made it
//! (its key, or the master key).

use crate::store::{Store, StoreError};
use polyplex_types::{GatewayError, JsonMap};
use serde_json::{json, Value};
use sqlx::Row;

/// The most items a create or an add takes at once (OpenAI's limit).
pub const MOST_ITEMS_AT_ONCE: usize = 20;

/// The most items of a conversation a response is given (the oldest go
/// first beyond it).
const MOST_ITEMS: i64 = 100_000;

/// A conversation as its API answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub id: String,
    pub created_at: i64,
    pub metadata: JsonMap,
}

impl Conversation {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "conversation",
            "created_at": self.created_at,
            "metadata": self.metadata,
        })
    }
}

/// A new conversation id: `conv_` and 48 hex digits, as OpenAI's look.
pub fn new_id() -> String {
    format!(
        "conv_{}{}",
        uuid::Uuid::new_v4().simple(),
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    )
}

/// Items as a conversation keeps them: checked as a Responses request's
/// `input` is (errors name them `items[i]...`), then each in the shape
/// OpenAI lists it, with an id (made from `stem` and its place when it has
/// none).
pub fn checked_items(items: &Value, stem: &str) -> Result<Vec<Value>, GatewayError> {
    let list = items.as_array().ok_or_else(|| {
        GatewayError::invalid_param(
            "items",
            "Invalid type for 'items': expected an array of items.",
        )
        .with_code("invalid_type")
    })?;
    if list.len() > MOST_ITEMS_AT_ONCE {
        return Err(GatewayError::invalid_param(
            "items",
            format!(
                "Invalid 'items': array too long. Expected an array with maximum length {MOST_ITEMS_AT_ONCE}, but got an array with length {} instead.",
                list.len()
            ),
        ));
    }
    if !list.is_empty() {
        let mut probe = JsonMap::new();
        probe.insert("model".into(), json!("-"));
        probe.insert("input".into(), items.clone());
        if let Err(refused) = crate::responses::to_chat(probe, "resp_check", &[]) {
            let (_, mut e) = *refused;
            if let Some(p) = e.param.as_deref().and_then(|p| p.strip_prefix("input")) {
                e.param = Some(format!("items{p}"));
                e.message = e.message.replace("'input", "'items");
            }
            return Err(e);
        }
    }
    Ok(list
        .iter()
        .enumerate()
        .map(|(i, item)| crate::responses::listed_item(item.clone(), stem, i))
        .collect())
}

/// A fresh stem for the ids of items added at once.
pub fn new_stem() -> String {
    format!("resp_{}", uuid::Uuid::new_v4().simple())
}

fn conversation_row(r: &sqlx::any::AnyRow) -> Result<Conversation, sqlx::Error> {
    let metadata: Option<String> = r.try_get("metadata")?;
    Ok(Conversation {
        id: r.try_get("id")?,
        created_at: r.try_get("created_at")?,
        metadata: metadata
            .and_then(|m| serde_json::from_str(&m).ok())
            .unwrap_or_default(),
    })
}

/// Where each of `n` items added now goes: after every item already there
/// (microseconds since the epoch, a thousand places each).
fn next_seqs(n: usize) -> impl Iterator<Item = i64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    (0..n as i64).map(move |i| now * 1000 + i)
}

fn item_id(item: &Value) -> &str {
    item.get("id").and_then(Value::as_str).unwrap_or("")
}

impl Store {
    /// Makes a conversation of `owner`'s with its first items (already
    /// [`checked_items`]).
    pub async fn create_conversation(
        &self,
        owner: &str,
        metadata: &JsonMap,
        items: &[Value],
    ) -> Result<Conversation, StoreError> {
        let c = Conversation {
            id: new_id(),
            created_at: crate::store::unix_now(),
            metadata: metadata.clone(),
        };
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO polyplex_conversations (id, owner, created_at, metadata) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&c.id)
        .bind(owner)
        .bind(c.created_at)
        .bind(Value::Object(c.metadata.clone()).to_string())
        .execute(&mut *tx)
        .await?;
        insert_items(&mut tx, &c.id, items).await?;
        tx.commit().await?;
        Ok(c)
    }

    /// A conversation of `owner`'s (another caller's is not found).
    pub async fn conversation(
        &self,
        id: &str,
        owner: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        let row = sqlx::query(
            "SELECT id, created_at, metadata FROM polyplex_conversations \
             WHERE id = $1 AND owner = $2",
        )
        .bind(id)
        .bind(owner)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(conversation_row).transpose()?)
    }

    /// Replaces a conversation's metadata; the conversation after it.
    pub async fn set_conversation_metadata(
        &self,
        id: &str,
        owner: &str,
        metadata: &JsonMap,
    ) -> Result<Option<Conversation>, StoreError> {
        sqlx::query("UPDATE polyplex_conversations SET metadata = $1 WHERE id = $2 AND owner = $3")
            .bind(Value::Object(metadata.clone()).to_string())
            .bind(id)
            .bind(owner)
            .execute(self.pool())
            .await?;
        self.conversation(id, owner).await
    }

    /// Deletes a conversation of `owner`'s and its items; whether there was one.
    pub async fn delete_conversation(&self, id: &str, owner: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query("DELETE FROM polyplex_conversations WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM polyplex_conversation_items WHERE conversation_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The items of a conversation of `owner`'s, oldest first; `None` if
    /// there is no such conversation.
    pub async fn conversation_items(
        &self,
        id: &str,
        owner: &str,
    ) -> Result<Option<Vec<Value>>, StoreError> {
        if self.conversation(id, owner).await?.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT item FROM (SELECT seq, item FROM polyplex_conversation_items \
             WHERE conversation_id = $1 ORDER BY seq DESC LIMIT $2) newest ORDER BY seq",
        )
        .bind(id)
        .bind(MOST_ITEMS)
        .fetch_all(self.pool())
        .await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            let text: String = r.try_get("item")?;
            if let Ok(v) = serde_json::from_str(&text) {
                items.push(v);
            }
        }
        Ok(Some(items))
    }

    /// One item of a conversation of `owner`'s: `None` if there is no such
    /// conversation, else the item if it has one by that id.
    pub async fn conversation_item(
        &self,
        id: &str,
        owner: &str,
        item: &str,
    ) -> Result<Option<Option<Value>>, StoreError> {
        if self.conversation(id, owner).await?.is_none() {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT item FROM polyplex_conversation_items \
             WHERE conversation_id = $1 AND item_id = $2 ORDER BY seq LIMIT 1",
        )
        .bind(id)
        .bind(item)
        .fetch_optional(self.pool())
        .await?;
        let text: Option<String> = row.map(|r| r.try_get("item")).transpose()?;
        Ok(Some(text.and_then(|t| serde_json::from_str(&t).ok())))
    }

    /// Adds items (each with its id) at the end of a conversation of
    /// `owner`'s; false if there is no such conversation.
    pub async fn add_conversation_items(
        &self,
        id: &str,
        owner: &str,
        items: &[Value],
    ) -> Result<bool, StoreError> {
        if self.conversation(id, owner).await?.is_none() {
            return Ok(false);
        }
        let mut tx = self.pool().begin().await?;
        insert_items(&mut tx, id, items).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes one item of a conversation of `owner`'s: `None` if there is
    /// no such conversation, else whether it had the item.
    pub async fn delete_conversation_item(
        &self,
        id: &str,
        owner: &str,
        item: &str,
    ) -> Result<Option<bool>, StoreError> {
        if self.conversation(id, owner).await?.is_none() {
            return Ok(None);
        }
        let done = sqlx::query(
            "DELETE FROM polyplex_conversation_items WHERE conversation_id = $1 AND item_id = $2",
        )
        .bind(id)
        .bind(item)
        .execute(self.pool())
        .await?;
        Ok(Some(done.rows_affected() > 0))
    }
}

async fn insert_items(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    items: &[Value],
) -> Result<(), sqlx::Error> {
    for (item, seq) in items.iter().zip(next_seqs(items.len())) {
        sqlx::query(
            "INSERT INTO polyplex_conversation_items (conversation_id, seq, item_id, item) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(seq)
        .bind(item_id(item))
        .bind(item.to_string())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> Value {
        json!({"type": "message", "role": "user", "content": text})
    }

    /// Items as kept: checked (errors named `items[i]`), in OpenAI's listed
    /// shape, each with an id.
    #[test]
    fn items_are_checked_and_given_ids() {
        let kept = checked_items(
            &json!([message("hi"), {"role": "assistant", "content": "yo"}]),
            "resp_ab",
        )
        .unwrap();
        assert_eq!(kept[0]["id"], "msg_abi00");
        assert_eq!(
            kept[0]["content"],
            json!([{"type": "input_text", "text": "hi"}])
        );
        assert_eq!(kept[1]["type"], "message");
        assert_eq!(kept[1]["content"][0]["type"], "output_text");
        let e = checked_items(
            &json!([message("a"), {"type": "message", "role": "user", "content": 3}]),
            "resp_x",
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("items[1].content"));
        assert!(e.message.contains("'items[1].content'"), "{}", e.message);
        let many = Value::Array(vec![message("x"); MOST_ITEMS_AT_ONCE + 1]);
        assert_eq!(
            checked_items(&many, "resp_x").unwrap_err().param.as_deref(),
            Some("items")
        );
        assert!(checked_items(&json!({}), "resp_x").is_err());
        assert!(checked_items(&json!([]), "resp_x").unwrap().is_empty());
    }

    /// A conversation's life in a store: made with items, added to in
    /// order, an item deleted, its metadata replaced, another owner's
    /// unseen, deleted with its items.
    async fn lifecycle(store: &Store) {
        let first = checked_items(&json!([message("one")]), &new_stem()).unwrap();
        let meta = json!({"topic": "t"}).as_object().cloned().unwrap();
        let c = store
            .create_conversation("key:a", &meta, &first)
            .await
            .unwrap();
        assert!(c.id.starts_with("conv_") && c.id.len() == 53, "{}", c.id);
        assert_eq!(
            store.conversation(&c.id, "key:a").await.unwrap(),
            Some(c.clone())
        );
        assert_eq!(store.conversation(&c.id, "key:b").await.unwrap(), None);
        let more = checked_items(&json!([message("two"), message("three")]), &new_stem()).unwrap();
        assert!(store
            .add_conversation_items(&c.id, "key:a", &more)
            .await
            .unwrap());
        assert!(!store
            .add_conversation_items(&c.id, "key:b", &more)
            .await
            .unwrap());
        let texts = |items: Vec<Value>| -> Vec<String> {
            items
                .iter()
                .map(|i| i["content"][0]["text"].as_str().unwrap().to_string())
                .collect()
        };
        let all = store
            .conversation_items(&c.id, "key:a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(texts(all.clone()), ["one", "two", "three"]);
        assert_eq!(
            store.conversation_items(&c.id, "key:b").await.unwrap(),
            None
        );
        let two = all[1]["id"].as_str().unwrap();
        let found = store.conversation_item(&c.id, "key:a", two).await.unwrap();
        assert_eq!(found, Some(Some(all[1].clone())));
        let none = store
            .conversation_item(&c.id, "key:a", "msg_x")
            .await
            .unwrap();
        assert_eq!(none, Some(None));
        let theirs = store.conversation_item(&c.id, "key:b", two).await.unwrap();
        assert_eq!(theirs, None);
        assert_eq!(
            store
                .delete_conversation_item(&c.id, "key:a", two)
                .await
                .unwrap(),
            Some(true)
        );
        assert_eq!(
            store
                .delete_conversation_item(&c.id, "key:a", two)
                .await
                .unwrap(),
            Some(false)
        );
        assert_eq!(
            store
                .delete_conversation_item(&c.id, "key:b", two)
                .await
                .unwrap(),
            None
        );
        let left = store
            .conversation_items(&c.id, "key:a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(texts(left), ["one", "three"]);
        let changed = json!({"topic": "u"}).as_object().cloned().unwrap();
        let after = store
            .set_conversation_metadata(&c.id, "key:a", &changed)
            .await
            .unwrap();
        assert_eq!(after.unwrap().metadata, changed);
        assert_eq!(
            store
                .set_conversation_metadata(&c.id, "key:b", &changed)
                .await
                .unwrap(),
            None
        );
        assert!(!store.delete_conversation(&c.id, "key:b").await.unwrap());
        assert!(store.delete_conversation(&c.id, "key:a").await.unwrap());
        assert_eq!(
            store.conversation_items(&c.id, "key:a").await.unwrap(),
            None
        );
        let rows =
            sqlx::query("SELECT item FROM polyplex_conversation_items WHERE conversation_id = $1")
                .bind(&c.id)
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert!(rows.is_empty(), "its items went with it");
    }

    #[tokio::test]
    async fn conversations_are_kept_in_sqlite_and_postgres() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        lifecycle(&store).await;
        crate::store::tests::in_a_postgres_database("polyplex_conv", |url| async move {
            let pg = Store::connect(&url).await.unwrap();
            lifecycle(&pg).await;
            pg.close().await;
        })
        .await;
    }
}
