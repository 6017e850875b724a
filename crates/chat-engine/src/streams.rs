//! Users' streams in memory: a ring of recent committed events, each user's index into it, live-only events,
//! and the per-user wake-up that long-polls and sockets wait on.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use chat_core::{Audience, ChannelId, Event, Seq, SpaceId, UserId};
use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

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

/// Where a durable event is indexed: in the index of the channel or space its audience names (shared by
/// every member), or, for an audience of named users, in each recipient's own index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Group {
    Channel(ChannelId),
    Space(SpaceId),
}

impl Group {
    fn of(audience: &Audience) -> Option<Self> {
        match audience {
            Audience::Channel(c) | Audience::ChannelAnd(c, _) => Some(Self::Channel(*c)),
            Audience::Space(s) | Audience::SpaceAnd(s, _) => Some(Self::Space(*s)),
            Audience::Nobody | Audience::User(_) | Audience::Users(_) => None,
        }
    }
}

/// The seqs of one channel's or space's tail events, ascending, the newest one ever published (kept when the
/// index is trimmed empty, so that a member's run of deliveries can be continued), and who got it.
#[derive(Debug, Default)]
struct GroupIndex {
    seqs: VecDeque<Seq>,
    last: Seq,
    /// The recipients of the group's newest event, sorted: exactly the users whose run of the group is open.
    members: Vec<UserId>,
}

/// The end of an open run: the user got every event of the group since the run's first, through its newest.
const OPEN: Seq = Seq::MAX;

/// One user's view of the tail.
#[derive(Debug)]
pub(crate) struct UserStream {
    /// Seqs of tail events addressed to the user by name (not through a channel or space), ascending.
    seqs: VecDeque<Seq>,
    /// Every event of `seqs`' kind after this seq is in `seqs` (while it is inside the global tail).
    floor: Seq,
    /// For each channel or space whose events the user got: the runs of that group's events they got, as
    /// `(first, last)` seqs, ascending. A run is a stretch of consecutive events of the group; a user who left
    /// and came back has one run per stay. The last run is open (`last == OPEN`) while the user got the
    /// group's newest event: it grows with the group without being touched.
    runs: HashMap<Group, Vec<(Seq, Seq)>>,
    /// Recent live-only events with the generation each was published at.
    live: VecDeque<(u64, Arc<Event>)>,
    /// Bumped at every event for this user; waiting readers wait on it.
    wake: Arc<Wake>,
}

impl UserStream {
    fn new() -> Self {
        Self {
            seqs: VecDeque::new(),
            floor: 0,
            runs: HashMap::default(),
            live: VecDeque::new(),
            wake: Arc::new(Wake::default()),
        }
    }
}

/// One user's wake-up: a version bumped at every event and a [`Notify`] for the readers waiting on it. Lighter
/// than a `watch` channel, whose send takes eight locks (one per shard of its waiter list): a wake-up per
/// recipient per event is the fan-out's hottest path.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    version: AtomicU64,
    /// How many live-only events the user has been sent.
    live: AtomicU64,
    notify: Notify,
}

impl Wake {
    /// Called with the streams' lock held, after the event is in place for readers.
    fn bump(&self) {
        self.version.fetch_add(1, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// Waits for a user's next event after the version it last saw.
#[derive(Debug)]
pub(crate) struct Waiter {
    wake: Arc<Wake>,
    seen: u64,
}

impl Waiter {
    /// Returns once an event came after the last one this waiter saw (at once if one already has).
    pub(crate) async fn changed(&mut self) {
        loop {
            let notified = self.wake.notify.notified();
            tokio::pin!(notified);
            // Registered before the version is read: a bump after the read wakes this future.
            notified.as_mut().enable();
            let now = self.wake.version.load(Ordering::Acquire);
            if now != self.seen {
                self.seen = now;
                return;
            }
            notified.await;
        }
    }
}

/// Live events kept per user for readers that are between two waits.
const LIVE_KEEP: usize = 64;

/// The tail and its indexes. Guarded by one std mutex: every critical section is short and never awaits, so
/// a blocking lock is cheaper than an async one (the reasoning of mini-redis's `db.rs`).
///
/// An event for a channel or a space is indexed once, in that group's index; its recipients' runs of the
/// group's events stay open and grow with the group, so only a recipient who was not one of the group's
/// previous event (a run opens) or one who is not any more (their run closes) is touched, and only readers
/// waiting at that moment are woken. Indexing each event's seq in every recipient's own index cost 8 bytes
/// per delivery (a channel of 10k members held 800 MB of seqs after its members' 10k joins); extending every
/// recipient's run cost a few cache misses per recipient, which made filling a channel of 57k members take
/// half an hour.
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
    groups: HashMap<Group, GroupIndex>,
    /// Users for whom a [`Waiter`] was made, with their wake-up: the only ones an event has to wake. Entries
    /// whose waiters are all gone are dropped by the sweep.
    watched: HashMap<UserId, Arc<Wake>>,
    /// Events published since the last sweep of entries that fell out of the tail.
    since_sweep: usize,
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
            users: HashMap::default(),
            groups: HashMap::default(),
            watched: HashMap::default(),
            since_sweep: 0,
        }
    }

    /// The last committed seq.
    pub(crate) fn last(&self) -> Seq {
        self.last
    }

    /// The whole log's events after `after` (at most `limit`), from memory; `None` when `after` is below the
    /// tail (the store has them).
    pub(crate) fn log_after(&self, after: Seq, limit: usize) -> Option<Vec<Arc<Event>>> {
        if after < self.floor {
            return None;
        }
        let start = usize::try_from(after - self.floor).unwrap_or(usize::MAX);
        Some(self.tail.iter().skip(start).take(limit).cloned().collect())
    }

    /// Publishes one committed durable event to its recipients, none of whom gets a copy of the event. For a
    /// channel or space: O(recipients) sequential work (the recipients compared with the group's previous
    /// ones), plus O(1) per recipient whose run opens or closes and per waiting reader woken. For named users:
    /// O(recipients).
    pub(crate) fn publish_durable(&mut self, event: Arc<Event>, recipients: &[UserId]) {
        let seq = event.seq;
        debug_assert_eq!(seq, self.last + 1, "the tail is contiguous");
        self.last = seq;
        let group = Group::of(&event.audience);
        self.tail.push_back(event);
        while self.tail.len() > self.capacity {
            if let Some(old) = self.tail.pop_front() {
                self.floor = old.seq;
            }
        }
        if let Some(group) = group {
            let recipients = sorted(recipients);
            let index = self.groups.entry(group).or_default();
            let previous = index.last;
            index.last = seq;
            index.seqs.push_back(seq);
            while index.seqs.front().is_some_and(|s| *s <= self.floor) {
                index.seqs.pop_front();
            }
            // A channel's messages go to the same members as the one before: nothing opens or closes.
            if index.members.as_slice() != &*recipients {
                let users = &mut self.users;
                diff(&index.members, &recipients, |user, now| {
                    let stream = users.entry(user).or_insert_with(UserStream::new);
                    let runs = stream.runs.entry(group).or_default();
                    if now {
                        // They did not get the group's previous event: a new run.
                        runs.push((seq, OPEN));
                    } else if let Some((_, last)) =
                        runs.last_mut().filter(|(_, last)| *last == OPEN)
                    {
                        // Their run ended with the previous event.
                        *last = previous;
                    }
                });
                index.members.clear();
                index.members.extend_from_slice(&recipients);
            }
            self.wake(&recipients);
        } else {
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
                stream.wake.bump();
            }
        }
        self.since_sweep += 1;
        if self.since_sweep >= self.capacity {
            self.sweep();
        }
    }

    /// Wakes the waiting readers among `recipients` (sorted), from whichever side is smaller.
    fn wake(&self, recipients: &[UserId]) {
        if self.watched.len() < recipients.len() {
            for (user, wake) in &self.watched {
                if recipients.binary_search(user).is_ok() {
                    wake.bump();
                }
            }
        } else {
            for user in recipients {
                if let Some(wake) = self.watched.get(user) {
                    wake.bump();
                }
            }
        }
    }

    /// Drops index entries and runs that fell out of the tail, groups left with nothing, and wake-ups nobody
    /// waits on: a group or user that went quiet is not trimmed by publishing. O(users + groups) once every
    /// `capacity` events.
    fn sweep(&mut self) {
        self.since_sweep = 0;
        // Waiters are only made under the streams' lock (`subscribe`), so one seen gone here stays gone.
        self.watched.retain(|_, wake| Arc::strong_count(wake) > 2);
        let floor = self.floor;
        self.groups.retain(|_, index| {
            while index.seqs.front().is_some_and(|s| *s <= floor) {
                index.seqs.pop_front();
            }
            index.seqs.shrink_to_fit();
            // A group without tail events is forgotten; a later event starts every member's run afresh.
            !index.seqs.is_empty()
        });
        for stream in self.users.values_mut() {
            while stream.seqs.front().is_some_and(|s| *s <= floor) {
                stream.seqs.pop_front();
            }
            stream.seqs.shrink_to_fit();
            stream.runs.retain(|group, runs| {
                runs.retain(|(_, last)| *last > floor);
                // A run of a forgotten group cannot go on (its `last` is gone), and it is below the floor.
                !runs.is_empty() && self.groups.contains_key(group)
            });
            stream.runs.shrink_to_fit();
        }
    }

    /// Hands a live-only event to the readers waiting on its recipients.
    pub(crate) fn publish_live(&mut self, event: Arc<Event>, recipients: &[UserId]) {
        for user in recipients {
            // Nobody waits for a user without a stream entry, so there is nobody to give the event to.
            let Some(stream) = self.users.get_mut(user) else {
                continue;
            };
            let generation = stream.wake.live.load(Ordering::Relaxed) + 1;
            stream.live.push_back((generation, Arc::clone(&event)));
            if stream.live.len() > LIVE_KEEP {
                stream.live.pop_front();
            }
            stream.wake.live.store(generation, Ordering::Relaxed);
            stream.wake.bump();
        }
    }

    /// How many live-only events the user has been sent. It makes the user's entry if there is none: live
    /// events are kept only for users with one, and whoever asks is about to wait.
    pub(crate) fn live_generation(&mut self, user: UserId) -> u64 {
        self.users
            .entry(user)
            .or_insert_with(UserStream::new)
            .wake
            .live
            .load(Ordering::Relaxed)
    }

    /// A waiter that wakes at the user's next event, and the live generation it starts from.
    pub(crate) fn subscribe(&mut self, user: UserId) -> (Waiter, u64) {
        let wake = &self.users.entry(user).or_insert_with(UserStream::new).wake;
        self.watched.entry(user).or_insert_with(|| Arc::clone(wake));
        let waiter = Waiter {
            seen: wake.version.load(Ordering::Acquire),
            wake: Arc::clone(wake),
        };
        (waiter, wake.live.load(Ordering::Relaxed))
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
        // The user's seqs after `after`: their own index's, and their runs' stretches of each group's index.
        // Each source is ascending. At most `limit + 1` are kept (one more than is returned, to know whether
        // the read stops short): once that many are held, `bound` is the largest of them, and every source
        // stops at it, so a user in many busy channels costs a short walk per channel, not a long sort.
        let take = limit.saturating_add(1);
        let mut seqs: Vec<Seq> = stream
            .seqs
            .range(first_after(&stream.seqs, after)..)
            .take(take)
            .copied()
            .collect();
        let mut bound = if seqs.len() == take {
            seqs.last().copied().unwrap_or(Seq::MAX)
        } else {
            Seq::MAX
        };
        for (group, runs) in &stream.runs {
            let Some(index) = self.groups.get(group) else {
                continue;
            };
            let mut taken = 0;
            let runs = runs
                .iter()
                .map(|&(first, last)| (first, if last == OPEN { index.last } else { last }))
                .filter(|(_, last)| *last > after);
            for (first, last) in runs {
                let from = after.max(first.saturating_sub(1));
                for seq in index.seqs.range(first_after(&index.seqs, from)..) {
                    if *seq > last || *seq > bound || taken == take {
                        break;
                    }
                    seqs.push(*seq);
                    taken += 1;
                }
            }
            if seqs.len() > take {
                seqs.sort_unstable();
                seqs.dedup();
                seqs.truncate(take);
                if seqs.len() == take {
                    bound = seqs.last().copied().unwrap_or(Seq::MAX);
                }
            }
        }
        seqs.sort_unstable();
        seqs.dedup();
        let mut cursor = self.last;
        if seqs.len() > limit {
            seqs.truncate(limit);
            // Stop short: the client continues after the last event it got.
            cursor = seqs.last().copied().unwrap_or(after);
        }
        let mut events = Vec::with_capacity(seqs.len());
        for seq in seqs {
            // Every seq taken is above `after`, which is at least the tail's floor, and at most `last`, so
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

/// The recipients sorted and without duplicates (they almost always come so: a member list, then perhaps
/// one more user).
fn sorted(recipients: &[UserId]) -> Cow<'_, [UserId]> {
    if recipients.windows(2).all(|w| w[0] < w[1]) {
        Cow::Borrowed(recipients)
    } else {
        let mut owned = recipients.to_vec();
        owned.sort_unstable();
        owned.dedup();
        Cow::Owned(owned)
    }
}

/// Walks two sorted lists and calls `f(user, true)` for each user only in `now`, `f(user, false)` for each
/// only in `before`.
fn diff(before: &[UserId], now: &[UserId], mut f: impl FnMut(UserId, bool)) {
    let (mut i, mut j) = (0, 0);
    while i < before.len() || j < now.len() {
        match (before.get(i), now.get(j)) {
            (Some(b), Some(n)) if b == n => {
                i += 1;
                j += 1;
            }
            (Some(b), Some(n)) if b < n => {
                f(*b, false);
                i += 1;
            }
            (Some(b), None) => {
                f(*b, false);
                i += 1;
            }
            (_, Some(n)) => {
                f(*n, true);
                j += 1;
            }
            (None, None) => break,
        }
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

    use chat_core::EventKind;

    fn user(n: u64) -> UserId {
        UserId::from_raw(n).expect("non-zero")
    }

    fn channel(n: u64) -> ChannelId {
        ChannelId::from_raw(n).expect("non-zero")
    }

    /// Publishes an event with seq `last + 1` for `audience` to `recipients`; returns its seq.
    fn publish(streams: &mut Streams, audience: Audience, recipients: &[u64]) -> Seq {
        let seq = streams.last() + 1;
        let event = Event {
            seq,
            ts: 0,
            audience,
            kind: EventKind::ChannelListed {
                channel: channel(1),
                listed: true,
            },
        };
        let recipients: Vec<UserId> = recipients.iter().map(|n| user(*n)).collect();
        streams.publish_durable(Arc::new(event), &recipients);
        seq
    }

    fn seqs(streams: &mut Streams, who: u64, after: Seq, limit: usize) -> (Vec<Seq>, Seq) {
        match streams.read(user(who), after, limit, None) {
            TailRead::Hit { events, cursor } => (events.iter().map(|e| e.seq).collect(), cursor),
            TailRead::Miss => panic!("miss"),
            TailRead::Ahead => panic!("ahead"),
        }
    }

    #[test]
    fn a_member_reads_the_channel_events_of_their_stays_only() {
        let mut s = Streams::new(0, 100, 100);
        let c = Audience::Channel(channel(7));
        let a = publish(&mut s, c.clone(), &[1, 2]);
        // User 2 parts (they still hear the part), is away for one event, and comes back.
        let parted = publish(&mut s, Audience::ChannelAnd(channel(7), user(2)), &[1, 2]);
        let away = publish(&mut s, c.clone(), &[1]);
        let dm = publish(&mut s, Audience::User(user(2)), &[2]);
        let back = publish(&mut s, c.clone(), &[1, 2]);
        let other = publish(&mut s, Audience::Channel(channel(8)), &[1]);
        assert_eq!(seqs(&mut s, 2, 0, 100), (vec![a, parted, dm, back], other));
        assert_eq!(
            seqs(&mut s, 1, 0, 100),
            (vec![a, parted, away, back, other], other)
        );
        assert_eq!(seqs(&mut s, 2, parted, 100), (vec![dm, back], other));
        assert_eq!(seqs(&mut s, 3, 0, 100), (vec![], other));
    }

    #[test]
    fn a_limited_read_stops_after_the_last_event_it_returns() {
        let mut s = Streams::new(0, 100, 100);
        let mut mine = Vec::new();
        for n in 0..12 {
            // Interleave the user's own index with two channels.
            let audience = match n % 3 {
                0 => Audience::User(user(1)),
                1 => Audience::Channel(channel(7)),
                _ => Audience::Space(SpaceId::from_raw(9).expect("non-zero")),
            };
            mine.push(publish(&mut s, audience, &[1]));
            publish(&mut s, Audience::User(user(2)), &[2]);
        }
        let mut after = 0;
        let mut got: Vec<Seq> = Vec::new();
        for limit in [1, 4, 5, 100] {
            let (events, cursor) = seqs(&mut s, 1, after, limit);
            assert!(events.len() <= limit);
            got.extend(&events);
            after = cursor;
        }
        assert_eq!(got, mine);
        assert_eq!(after, s.last());
    }

    #[test]
    fn a_sweep_forgets_what_left_the_tail_and_reads_go_on() {
        let mut s = Streams::new(0, 4, 100);
        let quiet = publish(&mut s, Audience::Channel(channel(5)), &[1]);
        for _ in 0..8 {
            publish(&mut s, Audience::Channel(channel(6)), &[1, 2]);
        }
        assert!(!s.groups.contains_key(&Group::Channel(channel(5))));
        assert!(s.groups.values().all(|g| g.seqs.len() <= 4));
        assert!(
            s.users[&user(1)]
                .runs
                .keys()
                .all(|g| *g == Group::Channel(channel(6)))
        );
        assert!(matches!(s.read(user(1), quiet, 10, None), TailRead::Miss));
        // The quiet channel speaks again: its member reads it after the newer events.
        let again = publish(&mut s, Audience::Channel(channel(5)), &[1]);
        let floor = s.floor;
        let (events, _) = seqs(&mut s, 1, floor, 100);
        assert_eq!(events.last(), Some(&again));
        assert_eq!(events.len(), 4);
    }

    /// Only readers waiting are woken by a channel's events, each by the events they are a recipient of,
    /// whichever side (recipients or waiters) the streams walk, and across sweeps.
    #[tokio::test]
    async fn a_waiter_wakes_at_its_users_channel_events_only() {
        let woken = |w: &mut Waiter| {
            let changed = w.changed();
            tokio::pin!(changed);
            let waker = std::task::Waker::noop();
            changed
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
                .is_ready()
        };
        let mut s = Streams::new(0, 4, 100);
        let many: Vec<u64> = (1..=50).collect();
        let (mut w1, _) = s.subscribe(user(1));
        let (mut w60, _) = s.subscribe(user(60));
        assert!(!woken(&mut w1));
        // Fifty recipients, two waiters: the waiters' side is walked.
        publish(&mut s, Audience::Channel(channel(7)), &many);
        assert!(woken(&mut w1));
        assert!(!woken(&mut w60), "user 60 is not a member");
        // One recipient: the recipients' side.
        publish(&mut s, Audience::Channel(channel(7)), &[60]);
        assert!(woken(&mut w60));
        assert!(!woken(&mut w1));
        // A waiter dropped is forgotten by a sweep; one made again is woken again.
        drop(w60);
        for _ in 0..8 {
            publish(&mut s, Audience::Channel(channel(8)), &[2]);
        }
        assert!(!s.watched.contains_key(&user(60)));
        assert!(s.watched.contains_key(&user(1)));
        let (mut w60, _) = s.subscribe(user(60));
        publish(&mut s, Audience::Channel(channel(7)), &[1, 60]);
        assert!(woken(&mut w60));
        assert!(woken(&mut w1));
    }

    /// A run stays open while its user gets every event of the group, and closes at the last one they got.
    #[test]
    fn runs_open_and_close_with_the_groups_recipients() {
        let mut s = Streams::new(0, 100, 100);
        let c = Audience::Channel(channel(7));
        let first = publish(&mut s, c.clone(), &[1, 2, 3]);
        let second = publish(&mut s, c.clone(), &[3, 1, 2]);
        let without_two = publish(&mut s, c.clone(), &[1, 3]);
        let back = publish(&mut s, c.clone(), &[1, 2, 3]);
        assert_eq!(
            s.users[&user(2)].runs[&Group::Channel(channel(7))],
            vec![(first, second), (back, OPEN)]
        );
        assert_eq!(
            s.users[&user(1)].runs[&Group::Channel(channel(7))],
            vec![(first, OPEN)]
        );
        assert_eq!(seqs(&mut s, 2, 0, 100).0, vec![first, second, back]);
        assert_eq!(
            seqs(&mut s, 3, 0, 100).0,
            vec![first, second, without_two, back]
        );
    }

    /// Random audiences and recipient sets: every read returns exactly the events the user was a recipient
    /// of, after the cursor, in order, as a per-user copy of every seq would.
    #[test]
    fn reads_agree_with_a_per_user_reference() {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut s = Streams::new(0, 64, 1000);
        let mut reference: HashMap<u64, Vec<Seq>> = HashMap::default();
        for _ in 0..2000 {
            let audience = match next(4) {
                0 => Audience::User(user(1 + next(6))),
                1 => Audience::Space(SpaceId::from_raw(1 + next(2)).expect("non-zero")),
                _ => Audience::Channel(channel(1 + next(3))),
            };
            let recipients: Vec<u64> = (1..=6).filter(|_| next(3) > 0).collect();
            let seq = publish(&mut s, audience, &recipients);
            for u in recipients {
                reference.entry(u).or_default().push(seq);
            }
            let who = 1 + next(6);
            let after = s.last().saturating_sub(next(70));
            let limit = 1 + usize::try_from(next(10)).unwrap_or(0);
            let expected: Vec<Seq> = reference
                .get(&who)
                .map(|all| all.iter().copied().filter(|q| *q > after).collect())
                .unwrap_or_default();
            match s.read(user(who), after, limit, None) {
                TailRead::Miss => assert!(after < s.floor),
                TailRead::Ahead => panic!("ahead"),
                TailRead::Hit { events, cursor } => {
                    let got: Vec<Seq> = events.iter().map(|e| e.seq).collect();
                    assert_eq!(
                        got,
                        expected.iter().copied().take(limit).collect::<Vec<_>>()
                    );
                    let next_expected = expected.get(got.len()).copied();
                    assert!(next_expected.is_none_or(|n| n > cursor), "nothing skipped");
                    assert!(got.last().is_none_or(|l| *l <= cursor));
                }
            }
        }
    }

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
