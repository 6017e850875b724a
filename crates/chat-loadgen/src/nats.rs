//! `fanout` and `rooms` against nats-server over its WebSocket listener (`--server-kind nats`): a fan-out
//! peer for chatd and the bare WebSocket baseline, driven with the same receiver machinery.
//!
//! Each receiver is a raw WebSocket connection ([`crate::raw_ws`]) that reads INFO, sends CONNECT, SUB and
//! PING, and is ready at the PONG; it then counts every MSG and takes its latency from the `t=<unix ns>`
//! stamp at the start of the payload. NATS may pack several MSGs in one frame or split one over frames, so
//! the protocol is parsed as a stream across frames. The sender is one more WebSocket connection publishing
//! stamped payloads of [`PAYLOAD_LEN`] bytes with PUB, a PING after every few and a bounded number of PINGs
//! unanswered; a message counts as sent once the PONG after it has come back (the server has then fanned it
//! out into its subscribers' buffers).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::Sent;
use crate::gateway::{Closed, Recorder, Swarm, Totals};
use crate::raw_ws::{self, RawWs};
use crate::util::{self, now_ns};

/// Bytes of each published payload: `t=<unix ns> ` padded with `x`, about the size of a small chat message.
pub(crate) const PAYLOAD_LEN: usize = crate::util::BODY_LEN;
/// Handshakes in flight at once per process.
const CONNECT_PARALLELISM: usize = 128;
/// One receiver's time from TCP connect to its PONG.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The publisher's kernel socket buffers.
const SENDER_SOCKET_BUFFER: u32 = 64 * 1024;
/// The CONNECT every client sends: no +OK acknowledgements, no headers.
const CONNECT: &str = r#"CONNECT {"verbose":false,"pedantic":false,"protocol":1,"lang":"rust","name":"chat-loadgen"}"#;
/// Unpaced sending: PUBs per WebSocket frame.
const BATCH: u64 = 32;
/// A PING after this many PUBs ...
const PING_EVERY: u64 = 256;
/// ... and at most this many PINGs unanswered (so at most PING_EVERY x this messages unconfirmed).
const MAX_PINGS: usize = 4;
/// The most one protocol line (INFO, MSG headers, -ERR) may take.
const MAX_LINE: usize = 64 * 1024;
/// The largest MSG payload accepted (nats-server's default max_payload is 1 MiB).
const MAX_PAYLOAD: usize = 8 << 20;

/// One operation from the server.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Op<'a> {
    /// A message (MSG or HMSG): its payload (for HMSG, headers and payload).
    Msg(&'a [u8]),
    Ping,
    Pong,
    /// INFO, +OK: nothing to do.
    Info,
    /// -ERR with its text.
    Err(&'a [u8]),
}

/// The NATS protocol stream from the server, parsed across chunks (WebSocket frames): complete operations
/// are parsed from the chunk in place, only an incomplete tail is kept for the next one.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    carry: Vec<u8>,
}

impl Parser {
    /// Parses `chunk` after whatever earlier chunks left over, handing each complete operation to `on`.
    pub(crate) fn feed(&mut self, chunk: &[u8], mut on: impl FnMut(Op<'_>)) -> Result<()> {
        if self.carry.is_empty() {
            let used = parse(chunk, &mut on)?;
            self.keep(&chunk[used..])
        } else {
            self.carry.extend_from_slice(chunk);
            let used = parse(&self.carry, &mut on)?;
            self.carry.drain(..used);
            let rest = self.carry.len();
            if rest > MAX_LINE + MAX_PAYLOAD {
                bail!("{rest} bytes without a complete operation");
            }
            Ok(())
        }
    }

    fn keep(&mut self, rest: &[u8]) -> Result<()> {
        if rest.len() > MAX_LINE + MAX_PAYLOAD {
            bail!("{} bytes without a complete operation", rest.len());
        }
        self.carry.extend_from_slice(rest);
        Ok(())
    }
}

/// Parses complete operations at the start of `buf`; returns how many bytes they took.
fn parse(buf: &[u8], on: &mut impl FnMut(Op<'_>)) -> Result<usize> {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        let Some(eol) = util::find_byte(rest, 0, b'\n') else {
            if rest.len() > MAX_LINE {
                bail!("a protocol line over {MAX_LINE} bytes");
            }
            return Ok(at);
        };
        let line = rest[..eol].strip_suffix(b"\r").unwrap_or(&rest[..eol]);
        let body = eol + 1;
        let verb = line.split(|&b| b == b' ').next().unwrap_or_default();
        if verb.eq_ignore_ascii_case(b"MSG") || verb.eq_ignore_ascii_case(b"HMSG") {
            // MSG <subject> <sid> [reply-to] <#bytes>; HMSG ... <#header bytes> <#total bytes>.
            let len = line
                .rsplit(|&b| b == b' ')
                .next()
                .and_then(util::parse_digits)
                .and_then(|n| usize::try_from(n).ok())
                .with_context(|| format!("bad MSG line {:?}", String::from_utf8_lossy(line)))?;
            if len > MAX_PAYLOAD {
                bail!("MSG of {len} bytes (at most {MAX_PAYLOAD})");
            }
            let Some(payload) = rest.get(body..body + len) else {
                return Ok(at);
            };
            match rest.get(body + len..body + len + 2) {
                None => return Ok(at),
                Some(b"\r\n") => {}
                Some(_) => bail!("MSG payload not followed by CRLF"),
            }
            on(Op::Msg(payload));
            at += body + len + 2;
            continue;
        }
        if verb.eq_ignore_ascii_case(b"PING") {
            on(Op::Ping);
        } else if verb.eq_ignore_ascii_case(b"PONG") {
            on(Op::Pong);
        } else if verb.eq_ignore_ascii_case(b"INFO") || verb.eq_ignore_ascii_case(b"+OK") {
            on(Op::Info);
        } else if verb.eq_ignore_ascii_case(b"-ERR") {
            on(Op::Err(line.get(5..).unwrap_or_default()));
        } else if !line.is_empty() {
            bail!(
                "unknown operation {:?}",
                String::from_utf8_lossy(&line[..line.len().min(40)])
            );
        }
        at += body;
    }
}

/// The send stamp at the start of a payload: `t=<digits>` followed by anything but a digit, or the end.
pub(crate) fn stamp(payload: &[u8]) -> Option<u64> {
    let digits = payload.strip_prefix(b"t=")?;
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    util::parse_digits(&digits[..end])
}

/// Opens one receiver per subject (fanout: all the same; rooms: one per room), receiver `i` bound to
/// `util::source_addr(i, child, procs)` with subscription id `i + 1` and kernel socket buffers of
/// `socket_buffer` bytes (0: the kernel's default).
pub(crate) fn start(
    server: SocketAddr,
    subjects: Vec<String>,
    child: usize,
    procs: usize,
    socket_buffer: u32,
) -> Swarm {
    let totals = Arc::new(Totals::for_connections(subjects.len()));
    let (stop, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let mut tasks = JoinSet::new();
    let connections = subjects.len();
    for (i, subject) in subjects.into_iter().enumerate() {
        let (totals, gate, stop) = (Arc::clone(&totals), Arc::clone(&gate), stop_rx.clone());
        let source = SocketAddr::new(util::source_addr(i, child, procs).into(), 0);
        tasks.spawn(async move {
            let sub = format!("SUB {subject} {}\r\n", i + 1);
            let conn = client(server, source, socket_buffer, sub);
            if let Err(e) = receiver(conn, i, &totals, gate, stop).await {
                totals.count_failure(i, &e);
            }
            totals.ended(i);
        });
    }
    Swarm::from_parts(totals, stop, tasks, connections)
}

/// A connected client: INFO read, CONNECT sent (with `extra` after it, e.g. a SUB), PONG received.
async fn client(
    server: SocketAddr,
    source: SocketAddr,
    socket_buffer: u32,
    extra: String,
) -> Result<(RawWs, Parser)> {
    let mut ws = RawWs::connect(server, source, socket_buffer, "/").await?;
    // NATS frames can be as large as what the server has queued for the client: take them in pieces.
    ws.frames.set_streaming();
    let mut parser = Parser::default();
    let hello = format!("{CONNECT}\r\n{extra}PING\r\n");
    ws.send(raw_ws::OP_BINARY, hello.as_bytes()).await?;
    loop {
        let chunk = ws.next_message().await?.context("closed before PONG")?;
        let (mut pong, mut ping, mut err) = (false, false, None);
        parser.feed(&chunk, |op| match op {
            Op::Pong => pong = true,
            Op::Ping => ping = true,
            Op::Err(e) => err = Some(String::from_utf8_lossy(e).into_owned()),
            Op::Msg(_) | Op::Info => {}
        })?;
        if let Some(e) = err {
            bail!("-ERR {e}");
        }
        if ping {
            ws.send(raw_ws::OP_BINARY, b"PONG\r\n").await?;
        }
        if pong {
            return Ok((ws, parser));
        }
    }
}

/// One receiver: `connect` (a [`client`] that subscribed) under the connect gate, then counting MSGs.
async fn receiver(
    connect: impl Future<Output = Result<(RawWs, Parser)>>,
    index: usize,
    totals: &Totals,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let permit = gate.acquire_owned().await?;
    let (mut ws, mut parser) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .context("timed out before PONG")??;
    drop(permit);
    totals.ready.fetch_add(1, Ordering::SeqCst);
    let mut recorder = Recorder::new(index);
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let outcome = loop {
        tokio::select! {
            read = ws.read() => {
                if !matches!(read, Ok(n) if n > 0) {
                    break Err(Closed.into());
                }
                let at = now_ns();
                let (mut ping, mut failed) = (false, None);
                let parsed = ws.frames.parse(usize::MAX, |chunk| {
                    if failed.is_some() {
                        return;
                    }
                    let fed = parser.feed(chunk, |op| match op {
                        // Only stamped messages are deliveries, as with gateway frames.
                        Op::Msg(payload) => {
                            if let Some(sent) = stamp(payload) {
                                recorder.add(at, sent);
                            }
                        }
                        Op::Ping => ping = true,
                        Op::Err(_) | Op::Pong | Op::Info => {}
                    });
                    if let Err(e) = fed {
                        failed = Some(e);
                    }
                });
                if let Some(e) = failed {
                    eprintln!("chat-loadgen: receiver {index}: {e:#}");
                    break Err(Closed.into());
                }
                if !matches!(parsed, Ok(false)) || ws.answer_ping().await.is_err() {
                    break Err(Closed.into());
                }
                if ping && ws.send(raw_ws::OP_BINARY, b"PONG\r\n").await.is_err() {
                    break Err(Closed.into());
                }
                recorder.settle(totals);
            }
            () = recorder.due(), if recorder.is_armed() => recorder.flush(totals),
            _ = &mut stopped => break Ok(()),
        }
    };
    recorder.flush(totals);
    outcome
}

/// Appends `PUB subject len\r\n<payload>\r\n` with a payload stamped now.
fn append_pub(out: &mut Vec<u8>, subject: &str) {
    use std::io::Write as _;
    let _ = write!(out, "PUB {subject} {PAYLOAD_LEN}\r\n");
    let start = out.len();
    let _ = write!(out, "t={} ", now_ns());
    let stamped = out.len() - start;
    out.resize(start + PAYLOAD_LEN.max(stamped), b'x');
    out.extend_from_slice(b"\r\n");
}

/// Publishes `messages` messages at `rate` per second (unpaced when 0), message `k` to `target(k)` =
/// (subject, receivers), stopping at `deadline`, over one WebSocket connection to `server`. A message counts
/// as sent (and its receivers as expected deliveries) once the PONG after it is back.
pub(crate) async fn publish_all(
    server: SocketAddr,
    messages: u64,
    rate: f64,
    deadline: Instant,
    window: crate::Window<'_>,
    target: impl Fn(u64) -> (String, u64),
) -> Result<Arc<Sent>> {
    let sent = Arc::new(Sent::default());
    let source = SocketAddr::from(([127, 0, 0, 1], 0));
    let (mut ws, mut parser) = client(server, source, SENDER_SOCKET_BUFFER, String::new())
        .await
        .context("NATS sender")?;
    // (messages, expected deliveries) covered by each PING sent and not yet answered.
    let mut unanswered: VecDeque<(u64, u64)> = VecDeque::new();
    let (mut batch, mut batch_expected, mut batch_len) = (Vec::new(), 0u64, 0u64);
    let (mut since_ping, mut since_ping_expected) = (0u64, 0u64);
    let start = tokio::time::Instant::now();
    let mut issued = 0;
    for k in 0..messages {
        if Instant::now() > deadline {
            eprintln!("send: --duration reached after {k} of {messages} messages");
            break;
        }
        if rate > 0.0 {
            tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate)).await;
        }
        let (subject, receivers) = target(k);
        issued += receivers;
        window.admit(issued, deadline).await;
        append_pub(&mut batch, &subject);
        batch_len += 1;
        batch_expected += receivers;
        let last = k + 1 == messages;
        if rate > 0.0 || batch_len >= BATCH || last {
            since_ping += batch_len;
            since_ping_expected += batch_expected;
            if since_ping >= PING_EVERY || last {
                batch.extend_from_slice(b"PING\r\n");
                unanswered.push_back((since_ping, since_ping_expected));
                (since_ping, since_ping_expected) = (0, 0);
            }
            ws.send(raw_ws::OP_BINARY, &batch)
                .await
                .context("publishing")?;
            batch.clear();
            (batch_len, batch_expected) = (0, 0);
            // Wait for PONGs while too many PINGs are out.
            while unanswered.len() > MAX_PINGS {
                pongs(&mut ws, &mut parser, &mut unanswered, &sent).await?;
            }
        }
    }
    // After the deadline: the batch not yet written, and what no PING covers yet.
    if batch_len > 0 || since_ping > 0 {
        since_ping += batch_len;
        since_ping_expected += batch_expected;
        batch.extend_from_slice(b"PING\r\n");
        unanswered.push_back((since_ping, since_ping_expected));
        ws.send(raw_ws::OP_BINARY, &batch).await?;
    }
    let wait = Instant::now() + Duration::from_secs(30);
    while !unanswered.is_empty() {
        if Instant::now() > wait {
            bail!("no PONG for the last messages within 30 s");
        }
        tokio::time::timeout(
            Duration::from_secs(30),
            pongs(&mut ws, &mut parser, &mut unanswered, &sent),
        )
        .await
        .context("waiting for the last PONG")??;
    }
    Ok(sent)
}

/// Reads what the sender's connection has; every PONG confirms the messages of the oldest PING.
async fn pongs(
    ws: &mut RawWs,
    parser: &mut Parser,
    unanswered: &mut VecDeque<(u64, u64)>,
    sent: &Sent,
) -> Result<()> {
    let chunk = ws.next_message().await?.context("sender closed")?;
    let (mut ping, mut err) = (false, None);
    parser.feed(&chunk, |op| match op {
        Op::Pong => {
            if let Some((n, expected)) = unanswered.pop_front() {
                sent.ok.fetch_add(n, Ordering::SeqCst);
                sent.expected.fetch_add(expected, Ordering::SeqCst);
            }
        }
        Op::Ping => ping = true,
        Op::Err(e) => err = Some(String::from_utf8_lossy(e).into_owned()),
        Op::Msg(_) | Op::Info => {}
    })?;
    if ping {
        ws.send(raw_ws::OP_BINARY, b"PONG\r\n").await?;
    }
    if let Some(e) = err {
        sent.errors.fetch_add(1, Ordering::SeqCst);
        bail!("-ERR {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Owned copies of the operations `chunks` parse into, fed one after another.
    fn ops(chunks: &[&[u8]]) -> Vec<String> {
        let mut parser = Parser::default();
        let mut out = Vec::new();
        for c in chunks {
            parser
                .feed(c, |op| {
                    out.push(match op {
                        Op::Msg(p) => format!("MSG {}", String::from_utf8_lossy(p)),
                        Op::Ping => "PING".to_owned(),
                        Op::Pong => "PONG".to_owned(),
                        Op::Info => "INFO".to_owned(),
                        Op::Err(e) => format!("ERR {}", String::from_utf8_lossy(e)),
                    });
                })
                .unwrap();
        }
        out
    }

    #[test]
    fn several_msgs_in_one_chunk() {
        let chunk = b"INFO {\"server_id\":\"x\"}\r\nMSG a.b 1 5\r\nt=123\r\nMSG a.b 1 reply.to 4\r\nx\r\ny\r\nPING\r\nMSG a 2 0\r\n\r\n+OK\r\n-ERR 'Slow Consumer'\r\n";
        assert_eq!(
            ops(&[chunk]),
            vec![
                "INFO",
                "MSG t=123",
                "MSG x\r\ny",
                "PING",
                "MSG ",
                "INFO",
                "ERR 'Slow Consumer'"
            ]
        );
    }

    #[test]
    fn one_msg_split_over_chunks() {
        let stream: &[u8] = b"MSG room.7 12 26\r\nt=1700000000000000000 xxxx\r\nPONG\r\n";
        let whole = ops(&[stream]);
        assert_eq!(whole, vec!["MSG t=1700000000000000000 xxxx", "PONG"]);
        for split in 1..stream.len() {
            assert_eq!(
                ops(&[&stream[..split], &stream[split..]]),
                whole,
                "split {split}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(ops(&bytes), whole);
    }

    #[test]
    fn bad_streams_are_errors() {
        for bad in [
            &b"MSG a 1 x\r\n"[..],
            b"MSG a 1 3\r\nabcd\r\n",
            b"WHAT\r\n",
            b"MSG a 1 99999999999\r\n",
        ] {
            assert!(Parser::default().feed(bad, |_| {}).is_err(), "{bad:?}");
        }
        let mut long = Parser::default();
        assert!(long.feed(&vec![b'a'; MAX_LINE + 1], |_| {}).is_err());
    }

    #[test]
    fn payloads_are_stamped_and_padded() {
        let mut out = Vec::new();
        append_pub(&mut out, "lg.all");
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with(&format!("PUB lg.all {PAYLOAD_LEN}\r\nt=")));
        let ops = ops(&[&[b"MSG lg.all 1 ".as_slice(), &out[11..]].concat()]);
        assert_eq!(ops.len(), 1);
        let payload = ops[0].strip_prefix("MSG ").unwrap().as_bytes();
        assert_eq!(payload.len(), PAYLOAD_LEN);
        let t = stamp(payload).unwrap();
        assert!(t > 1_600_000_000_000_000_000 && t <= now_ns());
        assert_eq!(stamp(b"t=12"), Some(12));
        assert_eq!(stamp(b"t=x"), None);
        assert_eq!(stamp(b"hello"), None);
    }
}
