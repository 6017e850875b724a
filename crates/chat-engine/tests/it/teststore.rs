//! A minimal in-memory store for the engine's tests: the log, snapshots, cursors and nonces, and a switch that
//! makes the next append fail. History and search are not its business and answer nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use chat_core::{
    Attachment, Audience, ChannelId, ClientId, Event, MessageId, Seq, UnixMillis, UserId,
};
use chat_store::{
    Batch, DbMeta, HistoryQuery, NonceRecord, RetentionReport, SearchHit, SearchQuery, ServerLink,
    Store, StoreError, StoredMessage, StreamPage,
};

#[derive(Debug, Default)]
struct Inner {
    events: Vec<Event>,
    snapshot: Option<(Seq, Vec<u8>)>,
    cursors: BTreeMap<ClientId, Seq>,
    nonces: HashMap<(UserId, String), NonceRecord>,
    stamps: HashMap<[u8; 32], u64>,
    links: BTreeMap<String, ServerLink>,
    fail_appends: bool,
    appends: usize,
}

#[derive(Debug)]
pub(crate) struct TestStore {
    meta: DbMeta,
    inner: Mutex<Inner>,
}

impl TestStore {
    pub(crate) fn new() -> Self {
        Self {
            meta: DbMeta {
                epoch: 0x5eed,
                invite_seed: 42,
                created_at: 1,
            },
            inner: Mutex::default(),
        }
    }

    pub(crate) fn fail_appends(&self, fail: bool) {
        self.inner.lock().unwrap().fail_appends = fail;
    }

    pub(crate) fn appends(&self) -> usize {
        self.inner.lock().unwrap().appends
    }
}

impl Store for TestStore {
    fn meta(&self) -> DbMeta {
        self.meta
    }

    fn last_seq(&self) -> Result<Seq, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .events
            .last()
            .map_or(0, |e| e.seq))
    }

    fn first_seq(&self) -> Result<Option<Seq>, StoreError> {
        Ok(self.inner.lock().unwrap().events.first().map(|e| e.seq))
    }

    fn append(&self, batch: &Batch<'_>) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.fail_appends {
            return Err(StoreError::Io(std::io::Error::other("disk on fire")));
        }
        let mut last = inner.events.last().map_or(0, |e| e.seq);
        for e in batch.events {
            if e.seq != last + 1 {
                return Err(StoreError::OutOfOrder { last, got: e.seq });
            }
            last = e.seq;
        }
        inner.appends += 1;
        inner.events.extend(batch.events.iter().cloned());
        inner.cursors.extend(batch.cursors.iter().copied());
        for n in batch.nonces {
            inner.nonces.insert((n.user, n.nonce.clone()), n.clone());
        }
        Ok(())
    }

    fn events_after(&self, after: Seq, limit: usize) -> Result<Vec<Event>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .events
            .iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .cloned()
            .collect())
    }

    fn user_stream(
        &self,
        user: UserId,
        after: Seq,
        limit: usize,
    ) -> Result<StreamPage, StoreError> {
        // Only events addressed to users by name: enough for the tests, which read old cursors rarely.
        let inner = self.inner.lock().unwrap();
        let mut next = after;
        let mut events = Vec::new();
        for e in inner.events.iter().filter(|e| e.seq > after) {
            if events.len() == limit {
                break;
            }
            next = e.seq;
            let visible = match &e.audience {
                Audience::User(u) => *u == user,
                Audience::Users(us) => us.contains(&user),
                _ => false,
            };
            if visible {
                events.push(e.clone());
            }
        }
        Ok(StreamPage {
            events,
            next,
            reset: false,
        })
    }

    fn save_snapshot(&self, seq: Seq, state: &[u8]) -> Result<(), StoreError> {
        self.inner.lock().unwrap().snapshot = Some((seq, state.to_vec()));
        Ok(())
    }

    fn latest_snapshot(&self) -> Result<Option<(Seq, Vec<u8>)>, StoreError> {
        Ok(self.inner.lock().unwrap().snapshot.clone())
    }

    fn save_cursors(&self, cursors: &[(ClientId, Seq)]) -> Result<(), StoreError> {
        self.inner
            .lock()
            .unwrap()
            .cursors
            .extend(cursors.iter().copied());
        Ok(())
    }

    fn cursors(&self) -> Result<Vec<(ClientId, Seq)>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .cursors
            .iter()
            .map(|(c, s)| (*c, *s))
            .collect())
    }

    fn nonces_since(&self, since: u64) -> Result<Vec<NonceRecord>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .nonces
            .values()
            .filter(|n| n.at >= since)
            .cloned()
            .collect())
    }

    fn spend_stamp(&self, key: [u8; 32], expires: u64, now: u64) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.stamps.retain(|_, e| *e > now);
        Ok(inner.stamps.insert(key, expires).is_none())
    }

    fn unspend_stamp(&self, key: [u8; 32]) -> Result<(), StoreError> {
        self.inner.lock().unwrap().stamps.remove(&key);
        Ok(())
    }

    fn links(&self) -> Result<Vec<ServerLink>, StoreError> {
        Ok(self.inner.lock().unwrap().links.values().cloned().collect())
    }

    fn add_link(&self, link: &ServerLink) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.links.contains_key(&link.name) {
            return Ok(false);
        }
        inner.links.insert(link.name.clone(), link.clone());
        Ok(true)
    }

    fn remove_link(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.inner.lock().unwrap().links.remove(name).is_some())
    }

    fn save_link_cursor(&self, name: &str, cursor: Seq) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        Ok(inner
            .links
            .get_mut(name)
            .map(|l| l.cursor = cursor)
            .is_some())
    }

    fn nonce(&self, user: UserId, nonce: &str) -> Result<Option<NonceRecord>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .nonces
            .get(&(user, nonce.to_owned()))
            .cloned())
    }

    fn history(&self, _query: &HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
        Ok(Vec::new())
    }

    fn message(&self, _id: MessageId) -> Result<Option<StoredMessage>, StoreError> {
        Ok(None)
    }

    fn search(&self, _query: &SearchQuery) -> Result<Vec<SearchHit>, StoreError> {
        Ok(Vec::new())
    }

    fn attachments(&self, _channel: ChannelId) -> Result<Vec<Attachment>, StoreError> {
        Ok(Vec::new())
    }

    fn enforce_retention(
        &self,
        _max_history: usize,
        _events_before: UnixMillis,
        _nonces_before: UnixMillis,
    ) -> Result<RetentionReport, StoreError> {
        Ok(RetentionReport::default())
    }

    fn backup(&self, _path: &Path) -> Result<(), StoreError> {
        Ok(())
    }
}
