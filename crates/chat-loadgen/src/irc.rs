//! IRC receivers and an IRC sender, for chatd's IRC door (`--server-kind irc`, connections to `--irc`) and
//! the bare line-broadcast server (`--server-kind bare-irc`, `chat-bench`'s `bare-irc`).
//!
//! A receiver is given a line `PASS NICK CHANNEL` (`-` for none): it sends PASS (a session token made over
//! HTTP, so that registering 10,000 of them is not 10,000 JOINs each told to everyone before it), NICK and
//! USER, JOIN for the bare server (chatd joins it to its channels itself), and `PING :ready`; it is ready at
//! that PONG. Then it counts the stamped PRIVMSG lines it reads (their `t=` stamp gives the latency) and
//! answers the server's PINGs. The sender is one connection writing `PRIVMSG #c :t=... ` lines (a batch per
//! write when unpaced) with a `PING` every few hundred; each PONG confirms the messages before it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::Sent;
use crate::gateway::{Closed, Recorder, Swarm, Totals};
use crate::util::{self, now_ns};

/// Connections registering at once.
const CONNECT_PARALLELISM: usize = 64;
/// How long one connection may take to be ready.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
/// The sender's lines per write when unpaced.
const BATCH: u64 = 64;
/// A PING after this many messages.
const PING_EVERY: u64 = 256;
/// The most PINGs out before the sender waits for a PONG.
const MAX_PINGS: usize = 8;

/// Opens one receiver per line (`PASS NICK CHANNEL`), receiver `i` bound to `util::source_addr(i, child,
/// procs)`, with kernel socket buffers of `socket_buffer` bytes (0: the kernel's default).
pub(crate) fn start(
    server: SocketAddr,
    lines: Vec<String>,
    child: usize,
    procs: usize,
    socket_buffer: u32,
) -> Swarm {
    let totals = Arc::new(Totals::for_connections(lines.len()));
    let (stop, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let mut tasks = JoinSet::new();
    let connections = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        let (totals, gate, stop) = (Arc::clone(&totals), Arc::clone(&gate), stop_rx.clone());
        let source = SocketAddr::new(util::source_addr(i, child, procs).into(), 0);
        tasks.spawn(async move {
            if let Err(e) =
                receiver(server, source, socket_buffer, &line, i, &totals, gate, stop).await
            {
                totals.count_failure(i, &e);
            }
            totals.ended(i);
        });
    }
    Swarm::from_parts(totals, stop, tasks, connections)
}

/// The registration lines for `PASS NICK CHANNEL`, ending with `PING :ready`.
fn hello(line: &str) -> String {
    let mut parts = line.split(' ');
    let (pass, nick, channel) = (
        parts.next().unwrap_or("-"),
        parts.next().unwrap_or("lg"),
        parts.next().unwrap_or("-"),
    );
    let mut out = String::new();
    if pass != "-" {
        out.push_str(&format!("PASS {pass}\r\n"));
    }
    out.push_str(&format!("NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n"));
    if channel != "-" {
        out.push_str(&format!("JOIN {channel}\r\n"));
    }
    out.push_str("PING :ready\r\n");
    out
}

async fn connect(server: SocketAddr, source: SocketAddr, socket_buffer: u32) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if socket_buffer > 0 {
        socket.set_send_buffer_size(socket_buffer)?;
        socket.set_recv_buffer_size(socket_buffer)?;
    }
    socket
        .bind(source)
        .with_context(|| format!("binding {source}"))?;
    let stream = socket.connect(server).await.context("connect")?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Complete lines in `buf` (taken out of it), each without its CRLF.
fn take_lines(buf: &mut Vec<u8>, mut each: impl FnMut(&[u8])) {
    let mut start = 0;
    while let Some(end) = buf[start..].iter().position(|b| *b == b'\n') {
        let line = &buf[start..start + end];
        each(line.strip_suffix(b"\r").unwrap_or(line));
        start += end + 1;
    }
    buf.drain(..start);
}

/// The `t=` stamp of a PRIVMSG line.
fn stamp(line: &[u8]) -> Option<u64> {
    const AT: &[u8] = b" :t=";
    let at = line.windows(AT.len()).position(|w| w == AT)? + AT.len();
    let digits = &line[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    util::parse_digits(&digits[..end])
}

/// The answer to a PING line, if `line` is one (with or without a source).
fn pong(line: &[u8]) -> Option<Vec<u8>> {
    let rest = match line.strip_prefix(b":") {
        Some(sourced) => &sourced[sourced.iter().position(|b| *b == b' ')? + 1..],
        None => line,
    };
    let token = rest.strip_prefix(b"PING ")?;
    let mut out = b"PONG ".to_vec();
    out.extend_from_slice(token);
    out.extend_from_slice(b"\r\n");
    Some(out)
}

#[allow(clippy::too_many_arguments)]
async fn receiver(
    server: SocketAddr,
    source: SocketAddr,
    socket_buffer: u32,
    line: &str,
    index: usize,
    totals: &Totals,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let permit = gate.acquire_owned().await?;
    let mut buf = Vec::with_capacity(4096);
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let mut stream = connect(server, source, socket_buffer).await?;
        stream.write_all(hello(line).as_bytes()).await?;
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!(
                    "closed before registering: {}",
                    String::from_utf8_lossy(&buf)
                );
            }
            buf.extend_from_slice(&chunk[..n]);
            let (mut ready, mut answers, mut error) = (false, Vec::new(), None);
            take_lines(&mut buf, |l| {
                if l.ends_with(b"PONG bare :ready")
                    || l.ends_with(b" :ready") && l.windows(6).any(|w| w == b" PONG ")
                {
                    ready = true;
                } else if let Some(p) = pong(l) {
                    answers.extend(p);
                } else if l.starts_with(b"ERROR") {
                    error = Some(String::from_utf8_lossy(l).into_owned());
                }
            });
            if let Some(e) = error {
                bail!("{e}");
            }
            if !answers.is_empty() {
                stream.write_all(&answers).await?;
            }
            if ready {
                return Ok::<_, anyhow::Error>(stream);
            }
        }
    })
    .await
    .context("timed out before registering")??;
    drop(permit);
    totals.ready.fetch_add(1, Ordering::SeqCst);
    let mut recorder = Recorder::new(index);
    let mut chunk = vec![0u8; 64 * 1024];
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let outcome = loop {
        tokio::select! {
            read = stream.read(&mut chunk) => {
                let n = match read {
                    Ok(n) if n > 0 => n,
                    _ => break Err(Closed.into()),
                };
                let at = now_ns();
                buf.extend_from_slice(&chunk[..n]);
                let mut answers = Vec::new();
                let mut largest = 0;
                take_lines(&mut buf, |l| match stamp(l) {
                    Some(sent) => recorder.add(at, sent),
                    None => {
                        largest = largest.max(l.len());
                        if let Some(p) = pong(l) {
                            answers.extend(p);
                        }
                    }
                });
                if largest > 0 {
                    totals.max_frame.fetch_max(largest, Ordering::Relaxed);
                }
                if !answers.is_empty() && stream.write_all(&answers).await.is_err() {
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

/// Sends `messages` stamped PRIVMSGs over one connection registered with `line` (`PASS NICK CHANNEL`), at
/// `rate` a second (unpaced when 0), message `k` to `target(k)` = (channel, receivers), with at most
/// `window` deliveries outstanding, until `deadline`.
pub(crate) async fn publish_all(
    server: SocketAddr,
    line: &str,
    messages: u64,
    rate: f64,
    deadline: Instant,
    window: crate::Window<'_>,
    target: impl Fn(u64) -> (String, u64),
) -> Result<Arc<Sent>> {
    let sent = Arc::new(Sent::default());
    let mut stream = connect(server, SocketAddr::from(([127, 0, 0, 1], 0)), 0)
        .await
        .context("IRC sender")?;
    stream.write_all(hello(line).as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    // Registered at the PONG to `ready`.
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!(
                    "the sender was closed before registering: {}",
                    String::from_utf8_lossy(&buf)
                );
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut ready = false;
            take_lines(&mut buf, |l| ready |= l.ends_with(b" :ready"));
            if ready {
                return Ok(());
            }
        }
    })
    .await
    .context("the sender timed out registering")??;
    let mut unanswered: VecDeque<(u64, u64)> = VecDeque::new();
    let (mut batch, mut batch_expected, mut batch_len) = (Vec::new(), 0u64, 0u64);
    let (mut since_ping, mut since_ping_expected, mut pings) = (0u64, 0u64, 0u64);
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
        let (channel, receivers) = target(k);
        issued += receivers;
        window.admit(issued, deadline).await;
        batch.extend_from_slice(
            format!("PRIVMSG {channel} :{}\r\n", util::stamped_body()).as_bytes(),
        );
        batch_len += 1;
        batch_expected += receivers;
        let last = k + 1 == messages;
        if rate > 0.0 || batch_len >= BATCH || last {
            since_ping += batch_len;
            since_ping_expected += batch_expected;
            if since_ping >= PING_EVERY || last {
                pings += 1;
                batch.extend_from_slice(format!("PING :sent{pings}\r\n").as_bytes());
                unanswered.push_back((since_ping, since_ping_expected));
                (since_ping, since_ping_expected) = (0, 0);
            }
            stream.write_all(&batch).await.context("sending")?;
            batch.clear();
            (batch_len, batch_expected) = (0, 0);
            while unanswered.len() > MAX_PINGS {
                pongs(&mut stream, &mut buf, &mut chunk, &mut unanswered, &sent).await?;
            }
        }
    }
    if batch_len > 0 || since_ping > 0 {
        since_ping += batch_len;
        since_ping_expected += batch_expected;
        pings += 1;
        batch.extend_from_slice(format!("PING :sent{pings}\r\n").as_bytes());
        unanswered.push_back((since_ping, since_ping_expected));
        stream.write_all(&batch).await?;
    }
    let wait = Instant::now() + Duration::from_secs(60);
    while !unanswered.is_empty() {
        if Instant::now() > wait {
            bail!("no PONG for the last messages within 60 s");
        }
        tokio::time::timeout(
            Duration::from_secs(60),
            pongs(&mut stream, &mut buf, &mut chunk, &mut unanswered, &sent),
        )
        .await
        .context("waiting for the last PONG")??;
    }
    Ok(sent)
}

/// Reads what the sender's connection has; every PONG to a `sentN` PING confirms the messages before it.
async fn pongs(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    unanswered: &mut VecDeque<(u64, u64)>,
    sent: &Sent,
) -> Result<()> {
    let n = stream.read(chunk).await?;
    if n == 0 {
        bail!(
            "the sender's connection closed: {}",
            String::from_utf8_lossy(buf)
        );
    }
    buf.extend_from_slice(&chunk[..n]);
    let mut answers = Vec::new();
    let mut error = None;
    take_lines(buf, |l| {
        if l.windows(6).any(|w| w == b" PONG ") && l.windows(6).any(|w| w == b" :sent") {
            if let Some((n, expected)) = unanswered.pop_front() {
                sent.ok.fetch_add(n, Ordering::SeqCst);
                sent.expected.fetch_add(expected, Ordering::SeqCst);
            }
        } else if let Some(p) = pong(l) {
            answers.extend(p);
        } else if l.starts_with(b"ERROR") || l.windows(5).any(|w| w == b" 404 ") {
            error = Some(String::from_utf8_lossy(l).into_owned());
        }
    });
    if !answers.is_empty() {
        stream.write_all(&answers).await?;
    }
    if let Some(e) = error {
        sent.errors.fetch_add(1, Ordering::SeqCst);
        bail!("{e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_stamps_and_pings() {
        let mut buf =
            b":a!1@guest PRIVMSG #c :t=12345 xxx\r\nPING :chatd\r\n:chatd PING :x\r\npartial"
                .to_vec();
        let mut lines = Vec::new();
        take_lines(&mut buf, |l| lines.push(l.to_vec()));
        assert_eq!(lines.len(), 3);
        assert_eq!(buf, b"partial");
        assert_eq!(stamp(&lines[0]), Some(12345));
        assert_eq!(stamp(&lines[1]), None);
        assert_eq!(pong(&lines[1]).unwrap(), b"PONG :chatd\r\n");
        assert_eq!(pong(&lines[2]).unwrap(), b"PONG :x\r\n");
        assert_eq!(
            hello("tok n #c"),
            "PASS tok\r\nNICK n\r\nUSER n 0 * :n\r\nJOIN #c\r\nPING :ready\r\n"
        );
        assert_eq!(hello("- n -"), "NICK n\r\nUSER n 0 * :n\r\nPING :ready\r\n");
    }
}
