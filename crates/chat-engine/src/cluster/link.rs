//! The link between a follower and the writer: one TCP connection per follower, carrying postcard frames
//! behind a 4-byte length. Followers send their commands up; the writer sends down every committed batch
//! (events with their command ends), the live-only events, and the replies.
//!
//! The link is an optimisation and a carrier, never the truth: a follower applies a pushed batch only if it
//! continues what it applied, and reads the log from the store otherwise. A frame a writer sends has been
//! committed before it is sent.

use std::time::Duration;

use chat_core::{ClientId, Command, Event, Origin, Seq, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest frame either side accepts: a batch of 1024 commands with large messages fits many times.
pub(crate) const MAX_FRAME: usize = 256 << 20;

/// How long a follower waits for the writer's answer to its hello.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// What a follower sends.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Up {
    /// The first frame: who it is, which term it expects to talk to, and the proof that it knows the
    /// cluster's secret.
    Hello {
        node: u16,
        term: u64,
        proof: [u8; 32],
        /// The follower's live connections per client: the writer counts them as connected, and drops them
        /// if the link goes.
        connections: Vec<(ClientId, u32)>,
    },
    /// A command to order and commit. `nonce` is always set (the follower makes one when the client gave
    /// none), so that a command resent after a writer change is applied once.
    Command {
        id: u64,
        origin: Origin,
        command: Command,
        nonce: (UserId, String),
        /// Whether the per-user message rate applies.
        rate: bool,
    },
    /// Asks for the seq of the last batch the writer has published: a follower waits until it has applied
    /// that far before it serves a request (see `Engine::sync`).
    Sync { id: u64 },
}

/// What the writer sends.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Down {
    /// The hello is accepted: the writer's term and the log's last seq at that moment.
    Welcome { term: u64, last: Seq },
    /// A committed batch, in log order, with the end of each command.
    Committed { events: Vec<Event>, ends: Vec<Seq> },
    /// Live-only events (typing, presence) of a batch.
    Live { events: Vec<Event> },
    /// The outcome of a command.
    Reply {
        id: u64,
        result: Result<WireReply, WireError>,
    },
    /// Every user who is not offline, with their presence and activities, as the writer sees them: sent
    /// once after the welcome, so that a follower answers presence as the writer does.
    Presences {
        users: Vec<(UserId, chat_core::Status, Vec<chat_core::Activity>)>,
    },
    /// The answer to [`Up::Sync`]: every command the writer acknowledged before it read this is at or
    /// before `seq`.
    Synced { id: u64, seq: Seq },
}

/// The writer's [`Down`] frames that it encodes from borrowed data: the same variants in the same order, so
/// the bytes decode as [`Down`].
#[derive(Serialize)]
pub(crate) enum DownRef<'a> {
    /// [`Down::Welcome`]; never encoded from here.
    #[allow(dead_code)]
    Welcome { term: u64, last: Seq },
    /// [`Down::Committed`].
    Committed {
        events: &'a [Event],
        ends: &'a [Seq],
    },
    /// [`Down::Live`].
    Live { events: &'a [&'a Event] },
}

/// An accepted command's reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct WireReply {
    pub(crate) seq: Seq,
    /// The engine's stored form of what the command made (see `engine::encode_reply`).
    pub(crate) reply: Vec<u8>,
}

/// A refused or failed command.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum WireError {
    /// The core refused it.
    Refused(chat_core::Error),
    /// The per-user rate is exceeded.
    RateLimited { retry_after_ms: u64, limit: u32 },
    /// The writer could not settle it (it is stepping down, or its commit failed): the follower resends it
    /// to whichever node writes next, with the same nonce.
    Retry(String),
}

/// The proof a follower gives: the cluster's secret bound to the term, so that a frame recorded for one
/// term is worth nothing in another.
pub(crate) fn proof(secret: &[u8; 32], term: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"chatd cluster link\0");
    h.update(secret);
    h.update(term.to_be_bytes());
    h.finalize().into()
}

/// Encodes a frame with its length prefix.
pub(crate) fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    let out = vec![0u8; 4];
    // Plain data into a Vec: encoding cannot fail short of running out of memory.
    match postcard::to_extend(frame, out) {
        Ok(mut bytes) => {
            let len = u32::try_from(bytes.len() - 4).unwrap_or(u32::MAX);
            bytes[..4].copy_from_slice(&len.to_be_bytes());
            bytes
        }
        Err(_) => Vec::new(),
    }
}

/// Reads one frame. `Ok(None)` at a clean end of the stream.
pub(crate) async fn read<T, R>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Option<T>>
where
    T: for<'de> Deserialize<'de>,
    R: AsyncReadExt + Unpin,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a link frame of {len} bytes is over the limit"),
        ));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    postcard::from_bytes(buf)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// Writes frames already encoded, flushing once.
pub(crate) async fn write_all<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    frames: &[std::sync::Arc<Vec<u8>>],
) -> std::io::Result<()> {
    for f in frames {
        w.write_all(f).await?;
    }
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_refused() {
        let frame = Down::Welcome { term: 7, last: 42 };
        let bytes = encode(&frame);
        let mut r = &bytes[..];
        let mut buf = Vec::new();
        let back: Down = read(&mut r, &mut buf).await.unwrap().unwrap();
        assert!(matches!(back, Down::Welcome { term: 7, last: 42 }));
        let end: Option<Down> = read(&mut r, &mut buf).await.unwrap();
        assert!(end.is_none());

        let mut huge = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        huge.extend([0u8; 16]);
        let mut r = &huge[..];
        let err = read::<Down, _>(&mut r, &mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn borrowed_frames_decode_as_owned_ones() {
        let event = chat_core::Event {
            seq: 3,
            ts: 9,
            audience: chat_core::Audience::Nobody,
            kind: chat_core::EventKind::Typing {
                user: chat_core::UserId(chat_core::Snowflake::MIN),
                channel: chat_core::ChannelId(chat_core::Snowflake::MIN),
            },
        };
        let bytes = encode(&DownRef::Committed {
            events: std::slice::from_ref(&event),
            ends: &[3],
        });
        let mut r = &bytes[..];
        let back: Down = read(&mut r, &mut Vec::new()).await.unwrap().unwrap();
        match back {
            Down::Committed { events, ends } => {
                assert_eq!(events, vec![event.clone()]);
                assert_eq!(ends, vec![3]);
            }
            other => panic!("{other:?}"),
        }
        let bytes = encode(&DownRef::Live { events: &[&event] });
        let mut r = &bytes[..];
        let back: Down = read(&mut r, &mut Vec::new()).await.unwrap().unwrap();
        assert!(matches!(back, Down::Live { events } if events == vec![event]));
    }

    #[test]
    fn proofs_differ_by_term_and_secret() {
        let a = proof(&[1; 32], 1);
        assert_ne!(a, proof(&[1; 32], 2));
        assert_ne!(a, proof(&[2; 32], 1));
        assert_eq!(a, proof(&[1; 32], 1));
    }

    #[test]
    fn refusals_cross_the_link_intact() {
        let e = chat_core::Error::NotSupported {
            what: "a thing the core names",
        };
        let bytes = postcard::to_stdvec(&WireError::Refused(e.clone())).unwrap();
        let back: WireError = postcard::from_bytes(&bytes).unwrap();
        match back {
            WireError::Refused(got) => assert_eq!(got, e),
            other => panic!("{other:?}"),
        }
    }
}
