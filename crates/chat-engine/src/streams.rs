//! Users' streams in memory: a ring of recent committed events, each user's index into it, live-only events,
//! and the per-user wake-up that long-polls and sockets wait on.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chat_core::{Event, Seq, UserId};
use tokio::sync::watch;

/// A position in the log: the seq of the last event read, and the log's epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// The log's epoch the seq belongs to.
    pub epoch: u64,
    /// The last seq read.
    pub seq: Seq,
}

/// The answer to a stream read.
#[derive(Clone, Debug)]
pub struct StreamRead {
    /// Events of the user's stream in order (shared with every other reader: nothing is copied per reader).
    /// Durable events come first; live-only ones (typing, presence), seen only by a reader that was waiting
    /// when they happened, come after them.
    pub events: Vec<Arc<Event>>,
    /// Where to continue from.
    pub cursor: Cursor,
    /// The given cursor was from another epoch, ahead of the log, or older than retention: the client must
    /// refresh its state and continue from `cursor`, and events were skipped.
    pub reset: bool,
    /// How many live-only events the user had been sent when this read was made. A reader that waits again
    /// passes it to [`Engine::wait_from`](crate::Engine::wait_from), which then also returns the live events
    /// that came between its two waits (they are kept briefly for exactly this).
    pub live: u64,
}

/// One user's view of the tail.
#[derive(Debug)]
pub(crate) struct UserStream {
    /// Seqs of tail events the user may see, ascending.
    seqs: VecDeque<Seq>,
    /// Every event of the user's stream after this seq is in `seqs` (while it is inside the global tail).
    floor: Seq,
    /// Recent live-only events with the generation each was published at.
    live: VecDeque<(u64, Arc<Event>)>,
    /// Bumped at every event for this user; waiting readers watch it. Its value is the live generation.
    wake: watch::Sender<u64>,
}

impl UserStream {
    fn new() -> Self {
        Self {
            seqs: VecDeque::new(),
            floor: 0,
            live: VecDeque::new(),
            wake: watch::Sender::new(0),
        }
    }
}

/// Live events kept per user for readers that are between two waits.
const LIVE_KEEP: usize = 64;

/// The tail and the users' indexes. Guarded by one std mutex: every critical section is short and never
/// awaits, so a blocking lock is cheaper than an async one (the reasoning of mini-redis's `db.rs`).
#[derive(Debug)]
pub(crate) struct Streams {
    /// Committed durable events with contiguous seqs; `tail[0].seq == floor + 1`.
    tail: VecDeque<Arc<Event>>,
    /// The seq just before the first tail event.
    floor: Seq,
    /// The last committed seq.
    last: Seq,
    capacity: usize,
    user_capacity: usize,
    users: HashMap<UserId, UserStream>,
}

/// What a read found in memory.
pub(crate) enum TailRead {
    /// Served from the tail: events after the cursor, and the new cursor.
    Hit {
        events: Vec<Arc<Event>>,
        cursor: Seq,
    },
    /// The cursor is older than the tail: ask the store.
    Miss,
    /// The cursor is ahead of the log.
    Ahead,
}

impl Streams {
    pub(crate) fn new(last: Seq, capacity: usize, user_capacity: usize) -> Self {
        Self {
            tail: VecDeque::new(),
            floor: last,
            last,
            capacity: capacity.max(1),
            user_capacity: user_capacity.max(1),
            users: HashMap::new(),
        }
    }

    /// The last committed seq.
    pub(crate) fn last(&self) -> Seq {
        self.last
    }

    /// Publishes one committed durable event to its recipients: O(recipients), and each recipient gets the
    /// event's seq, never a copy of the event.
    pub(crate) fn publish_durable(&mut self, event: Arc<Event>, recipients: &[UserId]) {
        let seq = event.seq;
        debug_assert_eq!(seq, self.last + 1, "the tail is contiguous");
        self.last = seq;
        self.tail.push_back(event);
        while self.tail.len() > self.capacity {
            if let Some(old) = self.tail.pop_front() {
                self.floor = old.seq;
            }
        }
        for user in recipients {
            let stream = self.users.entry(*user).or_insert_with(UserStream::new);
            stream.seqs.push_back(seq);
            while stream.seqs.front().is_some_and(|s| *s <= self.floor) {
                stream.seqs.pop_front();
            }
            while stream.seqs.len() > self.user_capacity {
                if let Some(s) = stream.seqs.pop_front() {
                    stream.floor = s;
                }
            }
            stream.wake.send_modify(|_| {});
        }
    }

    /// Hands a live-only event to the readers waiting on its recipients.
    pub(crate) fn publish_live(&mut self, event: Arc<Event>, recipients: &[UserId]) {
        for user in recipients {
            // Nobody waits for a user without a stream entry, so there is nobody to give the event to.
            let Some(stream) = self.users.get_mut(user) else {
                continue;
            };
            let generation = *stream.wake.borrow() + 1;
            stream.live.push_back((generation, Arc::clone(&event)));
            if stream.live.len() > LIVE_KEEP {
                stream.live.pop_front();
            }
            stream.wake.send_replace(generation);
        }
    }

    /// How many live-only events the user has been sent (the generation their wake-up watch carries). It
    /// makes the user's entry if there is none: live events are kept only for users with one, and whoever
    /// asks is about to wait.
    pub(crate) fn live_generation(&mut self, user: UserId) -> u64 {
        *self
            .users
            .entry(user)
            .or_insert_with(UserStream::new)
            .wake
            .borrow()
    }

    /// A receiver that wakes at the user's next event, and the live generation it starts from.
    pub(crate) fn subscribe(&mut self, user: UserId) -> watch::Receiver<u64> {
        self.users
            .entry(user)
            .or_insert_with(UserStream::new)
            .wake
            .subscribe()
    }

    /// Reads the user's stream after `after` from memory, with live events newer than `live_since`.
    pub(crate) fn read(
        &mut self,
        user: UserId,
        after: Seq,
        limit: usize,
        live_since: Option<u64>,
    ) -> TailRead {
        if after > self.last {
            return TailRead::Ahead;
        }
        let floor = self.floor;
        let stream = self.users.entry(user).or_insert_with(UserStream::new);
        if after < floor.max(stream.floor) {
            return TailRead::Miss;
        }
        while stream.seqs.front().is_some_and(|s| *s <= floor) {
            stream.seqs.pop_front();
        }
        let start = first_after(&stream.seqs, after);
        let mut events = Vec::new();
        let mut cursor = self.last;
        for (n, seq) in stream.seqs.range(start..).enumerate() {
            if n == limit {
                // Stop short: the client continues after the last event it got.
                cursor = events.last().map_or(after, |e: &Arc<Event>| e.seq);
                break;
            }
            // Seqs in a user's index are above the tail's floor (trimmed just above) and at most `last`, so
            // the index is inside the tail.
            let index = usize::try_from(seq - floor - 1).unwrap_or(usize::MAX);
            if let Some(event) = self.tail.get(index) {
                events.push(Arc::clone(event));
            }
        }
        if let Some(since) = live_since {
            events.extend(
                stream
                    .live
                    .iter()
                    .filter(|(generation, _)| *generation > since)
                    .map(|(_, e)| Arc::clone(e)),
            );
        }
        TailRead::Hit { events, cursor }
    }
}

/// The index of the first seq above `after` in an ascending index. Searched from the back, galloping: a live
/// reader is almost always a few events behind, so this touches a handful of the newest entries, where a
/// plain binary search over a long index would miss the cache at every step (measured with the long-poll
/// wake-up bench, where it was the largest cost of a wake-up).
fn first_after(seqs: &VecDeque<Seq>, after: Seq) -> usize {
    // Invariant: every entry at `hi` or beyond is above `after`.
    let mut hi = seqs.len();
    let mut step = 1;
    let mut lo = loop {
        let probe = hi.saturating_sub(step);
        match seqs.get(probe) {
            Some(s) if *s > after && probe > 0 => {
                hi = probe;
                step = step.saturating_mul(2);
            }
            Some(s) if *s > after => return 0,
            Some(_) => break probe + 1,
            None => return hi,
        }
    };
    // Now `seqs[lo - 1] <= after` and the answer is in `lo..=hi`.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if seqs.get(mid).is_some_and(|s| *s <= after) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_after_agrees_with_a_binary_search() {
        for len in 0..40u64 {
            let seqs: VecDeque<Seq> = (0..len).map(|i| 10 + 3 * i).collect();
            for after in 0..(20 + 3 * len) {
                assert_eq!(
                    first_after(&seqs, after),
                    seqs.partition_point(|s| *s <= after),
                    "len {len}, after {after}"
                );
            }
        }
    }
}
