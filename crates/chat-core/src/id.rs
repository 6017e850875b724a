//! Snowflake ids: Discord's layout and epoch, generated from the caller's `now` and the configured node id.

use std::fmt;
use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

/// Unix time in milliseconds. Every call into the core carries one; the core never reads a clock.
pub type UnixMillis = u64;

/// Discord's epoch (2015-01-01T00:00:00Z) in unix milliseconds: snowflake timestamps count from here.
pub const DISCORD_EPOCH: UnixMillis = 1_420_070_400_000;

const NODE_BITS: u32 = 10;
const SEQUENCE_BITS: u32 = 12;
const MAX_SEQUENCE: u64 = (1 << SEQUENCE_BITS) - 1;
/// The largest node id that fits the layout (10 bits).
pub const MAX_NODE_ID: u16 = (1 << NODE_BITS) - 1;

/// A 64-bit snowflake: bits 63..22 are milliseconds since [`DISCORD_EPOCH`], 21..12 the node id, 11..0 a
/// per-millisecond sequence. Never 0.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Snowflake(NonZeroU64);

impl Snowflake {
    /// The smallest snowflake.
    pub const MIN: Snowflake = Snowflake(NonZeroU64::MIN);

    /// Wraps a raw value; `None` for 0, which is never a valid snowflake.
    pub fn new(raw: u64) -> Option<Self> {
        NonZeroU64::new(raw).map(Self)
    }

    /// The raw 64-bit value.
    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// The creation time encoded in the id, in unix milliseconds.
    pub fn timestamp(self) -> UnixMillis {
        (self.get() >> (NODE_BITS + SEQUENCE_BITS)) + DISCORD_EPOCH
    }

    /// The node id encoded in the id.
    pub fn node(self) -> u16 {
        ((self.get() >> SEQUENCE_BITS) & u64::from(MAX_NODE_ID)) as u16
    }
}

impl fmt::Debug for Snowflake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Snowflake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Generates strictly increasing snowflakes for one node.
///
/// When the clock stands still or goes backwards, ids keep increasing by borrowing from the last id's
/// millisecond; when 4096 ids have been handed out within one millisecond, the generator moves to the next
/// millisecond rather than letting the sequence carry into the node bits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnowflakeGen {
    node: u16,
    last: u64,
}

impl SnowflakeGen {
    pub(crate) fn new(node: u16) -> Self {
        Self {
            node: node & MAX_NODE_ID,
            last: 0,
        }
    }

    /// The next id, strictly greater than every id handed out or [observed](Self::observe) before.
    pub(crate) fn next(&mut self, now: UnixMillis) -> Snowflake {
        let shift = NODE_BITS + SEQUENCE_BITS;
        let ms = now.saturating_sub(DISCORD_EPOCH).min(u64::MAX >> shift);
        let last_ms = self.last >> shift;
        let last_seq = self.last & MAX_SEQUENCE;
        let (ms, seq) = if self.last == 0 || ms > last_ms {
            (ms, 0)
        } else if last_seq < MAX_SEQUENCE {
            (last_ms, last_seq + 1)
        } else {
            (last_ms + 1, 0)
        };
        let mut raw = (ms << shift) | (u64::from(self.node) << SEQUENCE_BITS) | seq;
        if raw <= self.last {
            // Only reachable at the very top of the range; keep the order promise over the layout.
            raw = self.last.saturating_add(1);
        }
        // A zero id needs ms, node and sequence all zero; bump it so that 0 is never handed out.
        let raw = raw.max(1);
        self.last = raw;
        // `raw >= 1` was just ensured, so the conversion cannot fail.
        Snowflake(NonZeroU64::new(raw).expect("raw is at least 1"))
    }

    /// The same generator on another node id (a snapshot restored under a different NODE_ID).
    pub(crate) fn rebased(&self, node: u16) -> Self {
        Self {
            node: node & MAX_NODE_ID,
            last: self.last,
        }
    }

    /// Makes sure later ids are greater than `id` (used when replaying events made elsewhere).
    pub(crate) fn observe(&mut self, id: Snowflake) {
        self.last = self.last.max(id.get());
    }
}

macro_rules! typed_id {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {$(
        #[$doc]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Snowflake);

        impl $name {
            /// The raw 64-bit value.
            pub fn get(self) -> u64 {
                self.0.get()
            }

            /// Wraps a raw value; `None` for 0.
            pub fn from_raw(raw: u64) -> Option<Self> {
                Snowflake::new(raw).map(Self)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    )*};
}

typed_id! {
    /// Identifies a user.
    UserId,
    /// Identifies a client (one device of a user, with its own token and cursor).
    ClientId,
    /// Identifies a space (a Discord guild; the network is one).
    SpaceId,
    /// Identifies a channel of any kind, categories and threads included.
    ChannelId,
    /// Identifies a message, system messages included.
    MessageId,
    /// Identifies a role. A space's @everyone role has the space's id.
    RoleId,
    /// Identifies an invite link.
    InviteId,
}

impl SpaceId {
    /// The id of this space's @everyone role, which by Discord's rule equals the space id.
    pub fn everyone_role(self) -> RoleId {
        RoleId(self.0)
    }
}

/// The position of an event in the log: dense, from 1.
pub type Seq = u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_discord() {
        let mut ids = SnowflakeGen::new(5);
        let now = DISCORD_EPOCH + 1_000;
        let id = ids.next(now);
        assert_eq!(id.timestamp(), now);
        assert_eq!(id.node(), 5);
        assert_eq!(id.get() & MAX_SEQUENCE, 0);
        // A known Discord id: 175928847299117063 was made at 1462015105796 on worker 1 process 0.
        let known = Snowflake::new(175_928_847_299_117_063).unwrap();
        assert_eq!(known.timestamp(), 1_462_015_105_796);
    }

    #[test]
    fn strictly_increasing_when_clock_stalls_or_goes_back() {
        let mut ids = SnowflakeGen::new(MAX_NODE_ID);
        let mut last = ids.next(DISCORD_EPOCH + 10_000);
        for i in 0..10_000u64 {
            let now = DISCORD_EPOCH + 10_000 - (i % 7);
            let id = ids.next(now);
            assert!(id > last, "{id} after {last}");
            assert_eq!(
                id.node(),
                MAX_NODE_ID,
                "the sequence never carries into the node bits"
            );
            last = id;
        }
    }

    #[test]
    fn never_zero_even_before_the_epoch() {
        let mut ids = SnowflakeGen::new(0);
        let a = ids.next(0);
        let b = ids.next(0);
        assert!(a.get() >= 1 && b > a);
    }

    #[test]
    fn observe_moves_the_floor() {
        let mut ids = SnowflakeGen::new(1);
        let far = Snowflake::new((1 << 40) << 22).unwrap();
        ids.observe(far);
        assert!(ids.next(DISCORD_EPOCH) > far);
    }
}
