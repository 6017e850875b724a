//! The bare IRC line-broadcast server: the yardstick the IRC door's fan-out is compared against (issue: IRC
//! over TCP, fan-out to 10,000 connections).
//!
//! Plain tokio TCP, written the way the IRC door writes: a reader per connection reading lines, and a writer
//! task per connection joined by an unbounded queue, writing everything queued in one `write_all` (a syscall
//! per batch, not per line), with the door's 1 MiB send queue cap (past it, the connection is closed). A
//! message's line is built once and the same `Bytes` queued to every member of its channel. No registration
//! beyond a nick, no auth, no persistence, no engine: what the ratio to this server measures is everything
//! else chatd does per message.
//!
//! What it speaks: `NICK n` (remembered for the source of its messages), `JOIN #a,#b` (membership),
//! `PRIVMSG #c :text` (the line `:n!u@bare PRIVMSG #c :text` to every other member of `#c`), `PING x`
//! (answered `:bare PONG bare :x`, after every line the connection sent before it was handled). Everything
//! else is ignored.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The IRC door's default send queue cap.
pub const SENDQ: usize = 1 << 20;
/// The longest line read (the IRC door's limit: 512 bytes plus 8191 of tags).
const MAX_LINE: usize = 8703;

/// One member of a channel: its queue and the bytes waiting in it.
#[derive(Debug, Clone)]
struct Member {
    id: u64,
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
}

/// The server's state: channels and their members.
#[derive(Debug, Default)]
pub struct BareIrc {
    channels: RwLock<HashMap<String, Vec<Member>>>,
    next: AtomicU64,
}

impl BareIrc {
    /// An empty server.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

/// Accepts connections on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<BareIrc>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(Arc::clone(&state), stream));
            }
            () = &mut shutdown => return Ok(()),
        }
    }
}

async fn connection(state: Arc<BareIrc>, stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let queued = Arc::new(AtomicUsize::new(0));
    let me = Member {
        id: state.next.fetch_add(1, Ordering::Relaxed),
        tx,
        queued: Arc::clone(&queued),
    };
    let writer_queued = Arc::clone(&queued);
    let writer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(16 * 1024);
        while let Some(first) = rx.recv().await {
            buf.extend_from_slice(&first);
            while buf.len() < 64 * 1024 {
                match rx.try_recv() {
                    Ok(more) => buf.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            let n = buf.len();
            let written = write.write_all(&buf).await;
            writer_queued.fetch_sub(n, Ordering::Relaxed);
            buf.clear();
            if written.is_err() {
                return;
            }
        }
    });
    let mut nick = String::from("*");
    let mut joined: Vec<String> = Vec::new();
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(512);
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let (command, rest) = text.split_once(' ').unwrap_or((text, ""));
        match command {
            "NICK" => nick = rest.trim_start_matches(':').to_owned(),
            "PING" => {
                let token = rest.trim_start_matches(':');
                let pong = Bytes::from(format!(":bare PONG bare :{token}\r\n"));
                queued.fetch_add(pong.len(), Ordering::Relaxed);
                let _ = me.tx.send(pong);
            }
            "JOIN" => {
                let mut channels = state
                    .channels
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for name in rest
                    .split(' ')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .filter(|c| c.starts_with('#'))
                {
                    channels
                        .entry(name.to_owned())
                        .or_default()
                        .push(me.clone());
                    joined.push(name.to_owned());
                }
            }
            "PRIVMSG" => {
                let Some((target, _)) = rest.split_once(' ') else {
                    continue;
                };
                let out = Bytes::from(format!(":{nick}!u@bare PRIVMSG {rest}\r\n"));
                let mut slow = Vec::new();
                {
                    let channels = state
                        .channels
                        .read()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    for member in channels.get(target).into_iter().flatten() {
                        if member.id == me.id {
                            continue;
                        }
                        if member.queued.fetch_add(out.len(), Ordering::Relaxed) > SENDQ {
                            slow.push(member.id);
                        }
                        let _ = member.tx.send(out.clone());
                    }
                }
                if !slow.is_empty() {
                    // Over the send queue: dropped from every channel, its queue closed.
                    let mut channels = state
                        .channels
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    for members in channels.values_mut() {
                        members.retain(|m| !slow.contains(&m.id));
                    }
                }
            }
            _ => {}
        }
    }
    {
        let mut channels = state
            .channels
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for name in &joined {
            if let Some(members) = channels.get_mut(name) {
                members.retain(|m| m.id != me.id);
            }
        }
    }
    drop(me);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_privmsg_reaches_every_other_member_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, BareIrc::new(), std::future::pending()));
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        for (s, n) in [(&mut a, "a"), (&mut b, "b")] {
            s.write_all(format!("NICK {n}\r\nJOIN #x\r\nPING :{n}\r\n").as_bytes())
                .await
                .unwrap();
            let mut buf = [0u8; 64];
            let got = s.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..got], format!(":bare PONG bare :{n}\r\n").as_bytes());
        }
        a.write_all(b"PRIVMSG #x :hello\r\nPING :done\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let got = b.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..got], b":a!u@bare PRIVMSG #x :hello\r\n");
        let got = a.read(&mut buf).await.unwrap();
        assert_eq!(
            &buf[..got],
            b":bare PONG bare :done\r\n",
            "no echo to the sender"
        );
    }
}
