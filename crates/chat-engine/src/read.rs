//! The engine's read API over the store: history, search and message lookups, for the transports.
//!
//! These reads need no ordering with commands (a page of history is as of the last commit), so they run on
//! the blocking pool beside the writer rather than through it. Transports call them instead of holding the
//! store, so that they depend on the engine and the core only: the store behind them (SQLite today,
//! PostgreSQL or a cluster's shared log later) changes here and nowhere else. Who may read what is checked by
//! the caller beforehand, through [`Engine::query`], in the writer's order.

use chat_core::MessageId;
use chat_log::{HistoryQuery, SearchHit, SearchQuery, StoredMessage};

use crate::{Engine, EngineError};

impl Engine {
    /// A page of a channel's history, oldest first (see [`HistoryQuery`]).
    pub async fn history(&self, query: HistoryQuery) -> Result<Vec<StoredMessage>, EngineError> {
        self.read_store(move |store| store.history(&query)).await
    }

    /// Full-text search over the channels the query names, newest first (see [`SearchQuery`]).
    pub async fn search(&self, query: SearchQuery) -> Result<Vec<SearchHit>, EngineError> {
        self.read_store(move |store| store.search(&query)).await
    }

    /// One message by id, as history returns it (`None` if there is no such message, or no longer).
    pub async fn message(&self, id: MessageId) -> Result<Option<StoredMessage>, EngineError> {
        self.read_store(move |store| store.message(id)).await
    }

    /// Messages by id, in the order given, leaving out those that do not exist (a channel's pins).
    pub async fn messages(&self, ids: Vec<MessageId>) -> Result<Vec<StoredMessage>, EngineError> {
        self.read_store(move |store| {
            ids.into_iter()
                .filter_map(|id| store.message(id).transpose())
                .collect()
        })
        .await
    }
}
