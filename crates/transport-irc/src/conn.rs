//! One IRC connection: registration (CAP, PASS, SASL PLAIN, NICK, USER), then commands turned into the
//! core's and the user's stream turned into lines, with flood control, a bounded send queue and pings.
//!
//! The connection's task reads lines and the stream; a writer task of its own writes what is queued,
//! several lines per write, and saves the client's cursor once the lines of an event are written (so a
//! client cut off with lines still queued is played them again when it comes back).

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use chat_core::{
    ChannelKind, ChannelRef, Command, Created, Event, EventKind, MessageId, MessageKind, Outgoing,
    Target, UserId, UserRef,
};
use chat_engine::{Cursor, Engine, EngineError, Session, StreamRead};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Shared;
use crate::flood::{Flood, Verdict};
use crate::line::{self, Line, Message, ParseError};
use crate::numeric::*;
use crate::reader::{LineReader, Read};
use crate::render::{Caps, View, core_nick, irc_nick, source_of};

/// Events read from the stream at once.
const READ_LIMIT: usize = 256;
/// How long a stream read waits before it is made again.
const WAIT: Duration = Duration::from_secs(30);
/// Message ids this connection sent, kept to leave their echo out when `echo-message` is off.
const SENT_KEPT: usize = 512;
/// The capabilities offered, in `CAP LS` order.
const CAPS: &[&str] = &[
    "account-tag",
    "away-notify",
    "batch",
    "draft/chathistory",
    "echo-message",
    "labeled-response",
    "message-tags",
    "multi-prefix",
    "sasl",
    "server-time",
];
/// The most messages one CHATHISTORY answers (the history API's page).
const CHATHISTORY_MAX: usize = 100;
/// The least time between two probes (PINGs that confirm what a client has read).
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// SASL's most bytes of credentials (base64), as in other servers.
const SASL_MAX: usize = 4096;

type ReadFuture = Pin<Box<dyn Future<Output = Result<StreamRead, EngineError>> + Send>>;

/// What the writer task is given.
enum Out {
    /// A reply to the client's own commands.
    Text(String),
    /// Lines of the user's stream (flow-controlled by the low-water mark, not by the cap).
    Stream(String),
    /// Lines encoded once for many connections.
    Shared(Arc<[String]>),
    /// Save the client's cursor once everything before is written.
    Mark(Session, Cursor),
}

/// Writes `ERROR` and closes: for connections refused before they are served.
pub(crate) async fn refuse<S: AsyncWrite + Unpin>(mut stream: S, why: &str) {
    let line = Line::new("ERROR")
        .trailing(format!("Closing link: {why}"))
        .encode();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stream.write_all(line.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Serves one connection until it ends.
pub(crate) async fn serve<S>(shared: Arc<Shared>, stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read, write) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(AtomicUsize::new(0));
    let stream_queued = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_loop(
        write,
        rx,
        Arc::clone(&queued),
        Arc::clone(&stream_queued),
        Arc::clone(&written),
        shared.engine.clone(),
    ));
    let mut conn = Conn::new(Arc::clone(&shared), peer, tx, queued);
    conn.written = written;
    conn.stream_queued = stream_queued;
    conn.run(LineReader::new(read)).await;
    let live = conn.live.as_ref().map(|l| l.session);
    let guest_quit = conn.quit_guest.take();
    let stuck = conn.stuck;
    let confirmed = conn.confirmed;
    // A guest that said QUIT ends its session (its nick is free again, its channels see it quit) before its
    // connection closes: once the client sees the close, the nick can be taken.
    if let (Some(session), Some(reason)) = (live, guest_quit.clone()) {
        let _ = shared
            .engine
            .command(&session, Command::Quit { reason }, None)
            .await;
    }
    // The writer ends once every queued line is written (or the socket fails), saving cursors as it goes. A
    // client that stopped reading is cut off at once: what was not written stays after its cursor.
    drop(conn);
    let mut writer = writer;
    if stuck
        || tokio::time::timeout(Duration::from_secs(10), &mut writer)
            .await
            .is_err()
    {
        writer.abort();
        // What the kernel took for a client that does not read may never reach it (a connection closed with
        // data unsent ends in a reset): it resumes from what it showed it had read.
        if let (Some(session), Some(cursor)) = (live, confirmed) {
            shared.engine.save_cursor(&session, cursor);
        }
    }
    if let Some(session) = live.filter(|_| guest_quit.is_none()) {
        let _ = shared
            .engine
            .command(&session, Command::Disconnect, None)
            .await;
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut write: W,
    mut rx: mpsc::UnboundedReceiver<Out>,
    queued: Arc<AtomicUsize>,
    stream_queued: Arc<AtomicUsize>,
    written: Arc<AtomicUsize>,
    engine: Engine,
) {
    let mut buf = String::with_capacity(16 * 1024);
    while let Some(first) = rx.recv().await {
        let mut marks = Vec::new();
        let mut stream_bytes = 0;
        let mut next = Some(first);
        // Whatever else is queued goes out in the same write (up to 64 KiB of it).
        while let Some(item) = next.take() {
            match item {
                Out::Text(text) => buf.push_str(&text),
                Out::Stream(text) => {
                    buf.push_str(&text);
                    stream_bytes += text.len();
                }
                Out::Shared(lines) => lines.iter().for_each(|l| {
                    buf.push_str(l);
                    stream_bytes += l.len();
                }),
                Out::Mark(session, cursor) => marks.push((session, cursor)),
            }
            if buf.len() < 64 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            let done = write.write_all(buf.as_bytes()).await;
            queued.fetch_sub(buf.len(), Ordering::Relaxed);
            stream_queued.fetch_sub(stream_bytes, Ordering::Relaxed);
            written.fetch_add(buf.len(), Ordering::Relaxed);
            buf.clear();
            if done.is_err() {
                return;
            }
        }
        if let Some((session, cursor)) = marks.pop() {
            engine.save_cursor(&session, cursor);
        }
    }
    let _ = write.shutdown().await;
}

/// A registered connection's session.
struct Live {
    session: Session,
    /// Where the next stream read starts.
    cursor: Cursor,
    generation: Option<u64>,
    /// Events up to this seq are played back (the client comes back to what it missed).
    playback_until: u64,
    /// The playback batch open now: its id and target.
    batch: Option<(String, String)>,
}

struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    tx: mpsc::UnboundedSender<Out>,
    queued: Arc<AtomicUsize>,
    /// Bytes the writer has written so far: a connection whose queue stays full while this stands still
    /// is not reading.
    written: Arc<AtomicUsize>,
    /// The part of `queued` that is the user's stream.
    stream_queued: Arc<AtomicUsize>,
    caps: Caps,
    negotiating: bool,
    nick: Option<String>,
    user: Option<(String, String)>,
    pass: Option<String>,
    sasl: Sasl,
    live: Option<Live>,
    /// Set when the connection is to end (after the line that said so).
    closing: bool,
    /// A guest's QUIT: the session ends with this reason.
    quit_guest: Option<Option<String>>,
    /// Closed for not reading what it was sent (`SendQ exceeded`): what is queued is dropped.
    stuck: bool,
    /// The last position the client showed it had read (it answered a PING written after it); a client cut
    /// off for not reading resumes from here, not from what the kernel took.
    confirmed: Option<Cursor>,
    /// The PING written after the position it confirms, not answered yet; and when the last was sent.
    probe: Option<(u64, Cursor)>,
    probed_at: Option<Instant>,
    /// Ids of messages sent by this connection (their echo is left out without `echo-message`).
    sent: VecDeque<MessageId>,
    /// `labeled-response`: the label of the command being handled, and its replies so far.
    label: Option<String>,
    labeled: Vec<Line>,
    /// Labels waiting for the echo of the message they sent.
    echo_labels: Vec<(MessageId, String)>,
    batches: u64,
}

enum Sasl {
    None,
    /// `AUTHENTICATE PLAIN` was said; the credentials come next (in 400-byte pieces).
    Plain(String),
    Done(Session, Cursor),
}

impl Conn {
    fn new(
        shared: Arc<Shared>,
        peer: SocketAddr,
        tx: mpsc::UnboundedSender<Out>,
        queued: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            shared,
            peer,
            tx,
            queued,
            written: Arc::new(AtomicUsize::new(0)),
            stream_queued: Arc::new(AtomicUsize::new(0)),
            caps: Caps::default(),
            negotiating: false,
            nick: None,
            user: None,
            pass: None,
            sasl: Sasl::None,
            live: None,
            closing: false,
            quit_guest: None,
            stuck: false,
            confirmed: None,
            probe: None,
            probed_at: None,
            sent: VecDeque::new(),
            label: None,
            labeled: Vec::new(),
            echo_labels: Vec::new(),
            batches: 0,
        }
    }

    fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    fn server(&self) -> &str {
        &self.shared.settings.server_name
    }

    /// The nick numerics are addressed to (`*` before there is one).
    fn me(&self) -> String {
        self.nick.clone().unwrap_or_else(|| "*".into())
    }

    /// Queues text for the writer.
    /// Queues lines of the user's stream for the writer.
    fn enqueue_stream(&self, text: String) {
        self.queued.fetch_add(text.len(), Ordering::Relaxed);
        self.stream_queued.fetch_add(text.len(), Ordering::Relaxed);
        let _ = self.tx.send(Out::Stream(text));
    }

    fn enqueue(&self, text: String) {
        self.queued.fetch_add(text.len(), Ordering::Relaxed);
        let _ = self.tx.send(Out::Text(text));
    }

    /// Sends a line (into the labeled reply when a labeled command is being handled).
    fn send(&mut self, line: Line) {
        if self.label.is_some() {
            self.labeled.push(line);
        } else {
            self.enqueue(line.encode());
        }
    }

    /// A numeric to this client: `:server CODE nick ...`.
    fn num(&self, code: &str) -> Line {
        Line::new(code)
            .source(self.server().to_owned())
            .arg(self.me())
    }

    fn error_and_close(&mut self, why: &str) {
        tracing::debug!(peer = %self.peer, nick = %self.me(), reason = why, "closing an IRC connection");
        self.label = None;
        let text = Line::new("ERROR")
            .trailing(format!("Closing link: {why}"))
            .encode();
        self.enqueue(text);
        self.closing = true;
    }

    async fn run<R: AsyncRead + Unpin>(&mut self, mut reader: LineReader<R>) {
        let settings = self.shared.settings.clone();
        let mut closing = self.shared.closing.subscribe();
        let started = Instant::now();
        let mut flood = Flood::new(
            settings.flood_burst,
            settings.flood_rate,
            settings.flood_excess,
            started,
        );
        let mut backlog: VecDeque<(Instant, Message)> = VecDeque::new();
        let mut pending: Option<ReadFuture> = None;
        let mut last_heard = started;
        let mut pinged = false;
        let mut slow_since: Option<(Instant, usize)> = None;
        let low_water = settings.sendq / 4;
        while !self.closing {
            if pending.is_none()
                && self.queued.load(Ordering::Relaxed) < low_water
                && let Some(live) = &self.live
            {
                let engine = self.engine().clone();
                let (session, cursor, generation) = (live.session, live.cursor, live.generation);
                pending = Some(Box::pin(async move {
                    engine
                        .follow(&session, cursor, READ_LIMIT, WAIT, generation)
                        .await
                }));
            }
            let ping_at = last_heard + settings.ping_interval * if pinged { 2 } else { 1 };
            let register_by =
                (self.live.is_none()).then(|| started + settings.registration_timeout);
            let due = backlog.front().map(|(at, _)| *at);
            tokio::select! {
                biased;
                () = async { let _ = closing.wait_for(|c| *c).await; } => {
                    self.error_and_close("Server shutting down");
                }
                () = self.tx.closed() => return,
                read = reader.next() => {
                    last_heard = Instant::now();
                    pinged = false;
                    match read {
                        Ok(Read::Line(raw)) => match line::parse(&raw) {
                            Ok(message) => match flood.charge(Instant::now()) {
                                Verdict::Excess => self.error_and_close("Excess Flood"),
                                Verdict::At(at) if at <= Instant::now() && backlog.is_empty() => {
                                    self.handle(message).await;
                                }
                                Verdict::At(at) => backlog.push_back((at, message)),
                            },
                            Err(ParseError::Empty) => {}
                            Err(e) => self.bad_line(&e),
                        },
                        Ok(Read::TooLong) => {
                            let line = self.num(ERR_INPUTTOOLONG).trailing("Input line was too long");
                            self.send(line);
                        }
                        Ok(Read::Closed) | Err(_) => return,
                    }
                }
                () = sleep_until(due), if due.is_some() => {
                    if let Some((_, message)) = backlog.pop_front() {
                        self.handle(message).await;
                    }
                }
                read = next_read(&mut pending) => {
                    pending = None;
                    self.on_read(read).await;
                }
                () = tokio::time::sleep_until(ping_at) => {
                    if pinged {
                        let secs = (settings.ping_interval * 2).as_secs();
                        self.error_and_close(&format!("Ping timeout: {secs} seconds"));
                    } else {
                        pinged = true;
                        let line = Line::new("PING").trailing(self.server().to_owned());
                        self.send(line);
                    }
                }
                () = sleep_until(register_by), if register_by.is_some() => {
                    self.error_and_close("Registration timed out");
                }
                // While the send queue is over its low-water mark, look again now and then: a client that
                // reads nothing sends nothing either, and nothing else would wake this loop.
                () = tokio::time::sleep(settings.slow_limit / 4), if slow_since.is_some() => {}
            }
            // The stream is read only while under the low-water mark (a page of it may overshoot); what
            // overflows the cap is replies to a client that asks faster than it reads.
            let queued = self.queued.load(Ordering::Relaxed);
            let replies = queued.saturating_sub(self.stream_queued.load(Ordering::Relaxed));
            if replies > settings.sendq {
                self.stuck = true;
                self.error_and_close("SendQ exceeded");
            } else if queued >= low_water && self.live.is_some() {
                // Stuck: the queue stayed full and the writer wrote nothing for `slow_limit`.
                let progress = self.written.load(Ordering::Relaxed);
                let (since, at) = *slow_since.get_or_insert((Instant::now(), progress));
                if progress != at {
                    slow_since = Some((Instant::now(), progress));
                } else if since.elapsed() > settings.slow_limit {
                    self.stuck = true;
                    self.error_and_close("SendQ exceeded");
                }
            } else {
                slow_since = None;
            }
        }
    }

    fn bad_line(&mut self, error: &ParseError) {
        let text = match error {
            ParseError::BodyTooLong | ParseError::TagsTooLong => {
                let line = self
                    .num(ERR_INPUTTOOLONG)
                    .trailing("Input line was too long");
                self.send(line);
                return;
            }
            ParseError::NotUtf8 => "Line dropped: it is not UTF-8",
            ParseError::BadCharacter => "Line dropped: it holds a NUL or a lone CR",
            ParseError::NoCommand => "Line dropped: it has no command",
            ParseError::Empty => return,
        };
        let line = Line::new("NOTICE")
            .source(self.server().to_owned())
            .arg(self.me())
            .trailing(text);
        self.send(line);
    }

    /// Handles one line, labeling its replies where asked.
    async fn handle(&mut self, message: Message) {
        let label = match message.tag("label") {
            Some(Some(l)) if self.caps.labeled_response && l.len() <= 64 => Some(l.to_owned()),
            _ => None,
        };
        self.label = label;
        self.labeled.clear();
        self.dispatch(message).await;
        let Some(label) = self.label.take() else {
            return;
        };
        let lines = std::mem::take(&mut self.labeled);
        match lines.len() {
            // Nothing to answer (or the answer is the echo of a message, which carries the label then).
            0 if self.echo_labels.iter().any(|(_, l)| *l == label) => {}
            0 => self.send(
                Line::new("ACK")
                    .tag("label", Some(label))
                    .source(self.server().to_owned()),
            ),
            1 => {
                let line = lines
                    .into_iter()
                    .next()
                    .map(|l| l.tag("label", Some(label)));
                if let Some(line) = line {
                    self.send(line);
                }
            }
            _ => {
                let id = self.batch_id();
                self.send(
                    Line::new("BATCH")
                        .tag("label", Some(label))
                        .source(self.server().to_owned())
                        .arg(format!("+{id}"))
                        .arg("labeled-response"),
                );
                for line in lines {
                    self.send(line.tag("batch", Some(id.clone())));
                }
                self.send(
                    Line::new("BATCH")
                        .source(self.server().to_owned())
                        .arg(format!("-{id}")),
                );
            }
        }
    }

    fn batch_id(&mut self) -> String {
        self.batches += 1;
        format!("b{}", self.batches)
    }

    async fn dispatch(&mut self, m: Message) {
        let command = m.command.clone();
        match command.as_str() {
            "CAP" => {
                self.cap(&m);
                // CAP END (or a REQ after registration) may be what registration waited for.
                return self.try_register().await;
            }
            "PING" => {
                let token = m.param(0).unwrap_or("").to_owned();
                let line = Line::new("PONG")
                    .source(self.server().to_owned())
                    .arg(self.server().to_owned())
                    .trailing(token);
                return self.send(line);
            }
            "PONG" => {
                // The answer to a probe: the client has read everything written before it.
                if let Some((token, cursor)) = &self.probe
                    && m.params.iter().any(|p| *p == format!("chatd-{token}"))
                {
                    self.confirmed = Some(*cursor);
                    self.probe = None;
                }
                return;
            }
            "QUIT" => {
                if let Some(live) = &self.live
                    && self
                        .engine()
                        .directory()
                        .user(live.session.user)
                        .is_some_and(|c| c.guest)
                {
                    self.quit_guest = Some(m.param(0).filter(|r| !r.is_empty()).map(str::to_owned));
                }
                let reason = m.param(0).unwrap_or("Client Quit").to_owned();
                return self.error_and_close(&format!("Quit: {reason}"));
            }
            _ => {}
        }
        if self.live.is_none() {
            match command.as_str() {
                // Clients such as ii send `PASS a pass phrase` without the `:`: the words are one password.
                "PASS" if !m.params.is_empty() => self.pass = Some(m.params.join(" ")),
                "PASS" => self.need_more(&command),
                "NICK" => match m.param(0).filter(|n| !n.is_empty()) {
                    None => {
                        let line = self.num(ERR_NONICKNAMEGIVEN).trailing("No nickname given");
                        self.send(line);
                    }
                    Some(nick) => match chat_core::validate_nick(nick) {
                        Ok(()) => {
                            self.nick = Some(nick.to_owned());
                            self.try_register().await;
                        }
                        Err(e) => {
                            let line = self
                                .num(ERR_ERRONEUSNICKNAME)
                                .arg(nick)
                                .trailing(e.to_string());
                            self.send(line);
                        }
                    },
                },
                "USER" => {
                    if m.params.len() < 4 {
                        return self.need_more(&command);
                    }
                    let ident: String = m.params[0]
                        .chars()
                        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                        .take(32)
                        .collect();
                    self.user = Some((
                        if ident.is_empty() {
                            "irc".into()
                        } else {
                            ident
                        },
                        m.params[3].clone(),
                    ));
                    self.try_register().await;
                }
                "AUTHENTICATE" => self.authenticate(&m).await,
                _ => {
                    let line = self
                        .num(ERR_NOTREGISTERED)
                        .trailing("You have not registered");
                    self.send(line);
                }
            }
            return;
        }
        match command.as_str() {
            "PASS" | "USER" => {
                let line = self
                    .num(ERR_ALREADYREGISTERED)
                    .trailing("You may not reregister");
                self.send(line);
            }
            "AUTHENTICATE" => {
                let line = self
                    .num(ERR_SASLALREADY)
                    .trailing("You have already authenticated");
                self.send(line);
            }
            "NICK" => match m.param(0).filter(|n| !n.is_empty()) {
                None => {
                    let line = self.num(ERR_NONICKNAMEGIVEN).trailing("No nickname given");
                    self.send(line);
                }
                Some(nick) => {
                    let nick = nick.to_owned();
                    self.run_command(Command::Nick { nick: nick.clone() }, Some(&nick))
                        .await;
                }
            },
            "JOIN" => self.join(&m).await,
            "PART" => {
                let Some(channels) = m.param(0) else {
                    return self.need_more(&command);
                };
                let reason = m.param(1).filter(|r| !r.is_empty()).map(str::to_owned);
                for channel in channels.split(',').filter(|c| !c.is_empty()) {
                    let c = Command::Part {
                        channel: ChannelRef::Name(channel.to_owned()),
                        reason: reason.clone(),
                    };
                    self.run_command(c, Some(channel)).await;
                }
            }
            "PRIVMSG" | "NOTICE" => self.privmsg(&m).await,
            "TAGMSG" => self.tagmsg(&m).await,
            "TOPIC" => self.topic(&m).await,
            "NAMES" => match m.param(0) {
                Some(channels) => {
                    for channel in channels.split(',').filter(|c| !c.is_empty()) {
                        self.names(channel).await;
                    }
                }
                None => {
                    let line = self
                        .num(RPL_ENDOFNAMES)
                        .arg("*")
                        .trailing("End of /NAMES list");
                    self.send(line);
                }
            },
            "MODE" => self.mode(&m).await,
            "KICK" => {
                if m.params.len() < 2 {
                    return self.need_more(&command);
                }
                let reason = m.param(2).filter(|r| !r.is_empty()).map(str::to_owned);
                for nick in m.params[1].split(',').filter(|n| !n.is_empty()) {
                    let c = Command::Kick {
                        channel: ChannelRef::Name(m.params[0].clone()),
                        user: UserRef::Nick(core_nick(nick)),
                        reason: reason.clone(),
                    };
                    self.run_command(c, Some(&m.params[0])).await;
                }
            }
            "INVITE" => {
                if m.params.len() < 2 {
                    return self.need_more(&command);
                }
                let c = Command::Invite {
                    channel: ChannelRef::Name(m.params[1].clone()),
                    user: UserRef::Nick(core_nick(&m.params[0])),
                };
                if self.run_command(c, Some(&m.params[1])).await.is_some() {
                    let line = self
                        .num(RPL_INVITING)
                        .arg(m.params[0].clone())
                        .arg(m.params[1].clone());
                    self.send(line);
                }
            }
            "AWAY" => {
                let message = m.param(0).filter(|a| !a.is_empty()).map(str::to_owned);
                let away = message.is_some();
                if self
                    .run_command(Command::Away { message }, None)
                    .await
                    .is_some()
                {
                    let line = if away {
                        self.num(RPL_NOWAWAY)
                            .trailing("You have been marked as being away")
                    } else {
                        self.num(RPL_UNAWAY)
                            .trailing("You are no longer marked as being away")
                    };
                    self.send(line);
                }
            }
            "CHATHISTORY" => self.chathistory(&m).await,
            "WHO" => self.who(&m).await,
            "WHOIS" => self.whois(&m).await,
            "LIST" => self.list().await,
            "MOTD" => self.motd(),
            "LUSERS" => self.lusers().await,
            "VERSION" => {
                let version = self.shared.settings.version.clone();
                let line = self
                    .num(RPL_VERSION)
                    .arg(format!("chatd-{version}"))
                    .arg(self.server().to_owned())
                    .trailing("");
                self.send(line);
                self.isupport();
            }
            "TIME" => {
                let now = crate::render::iso(chat_engine::now_ms());
                let line = self
                    .num(RPL_TIME)
                    .arg(self.server().to_owned())
                    .trailing(now);
                self.send(line);
            }
            "ISON" => {
                let wanted: Vec<String> = m
                    .params
                    .iter()
                    .flat_map(|p| p.split(' '))
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect();
                let present = self
                    .engine()
                    .query(move |core| {
                        wanted
                            .into_iter()
                            .filter(|n| {
                                core.user_by_nick(&core_nick(n))
                                    .is_some_and(|u| !u.released)
                            })
                            .collect::<Vec<_>>()
                    })
                    .await
                    .unwrap_or_default();
                let line = self.num(RPL_ISON).trailing(present.join(" "));
                self.send(line);
            }
            "USERHOST" => {
                let wanted: Vec<String> = m.params.iter().take(5).map(|n| core_nick(n)).collect();
                let found = self
                    .engine()
                    .query(move |core| {
                        wanted
                            .into_iter()
                            .filter_map(|n| {
                                core.user_by_nick(&n)
                                    .filter(|u| !u.released)
                                    .map(|u| (u.id, u.away.is_some()))
                            })
                            .collect::<Vec<_>>()
                    })
                    .await
                    .unwrap_or_default();
                let text = {
                    let dir = self.engine().directory();
                    found
                        .iter()
                        .map(|(id, away)| {
                            let source = source_of(&dir, *id);
                            let (nick, rest) = source.split_once('!').unwrap_or((&source, ""));
                            format!("{nick}={}{rest}", if *away { '-' } else { '+' })
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let line = self.num(RPL_USERHOST).trailing(text);
                self.send(line);
            }
            _ => {
                let line = self
                    .num(ERR_UNKNOWNCOMMAND)
                    .arg(command)
                    .trailing("Unknown command");
                self.send(line);
            }
        }
    }

    fn need_more(&mut self, command: &str) {
        let line = self
            .num(ERR_NEEDMOREPARAMS)
            .arg(command)
            .trailing("Not enough parameters");
        self.send(line);
    }

    /// Runs a command as this connection's client; a refusal is answered with its numeric (about `about`,
    /// a channel or nick, where the numeric names one).
    async fn run_command(
        &mut self,
        command: Command,
        about: Option<&str>,
    ) -> Option<Option<Created>> {
        let session = self.live.as_ref()?.session;
        match self.engine().command(&session, command, None).await {
            Ok(reply) => {
                self.catch_up(reply.seq).await;
                Some(reply.created)
            }
            Err(e) => {
                self.refused(&e, about);
                None
            }
        }
    }

    /// Waits until the send queue is under its low-water mark; a client that reads nothing for `slow_limit`
    /// meanwhile is closed (`false`).
    async fn wait_for_room(&mut self) -> bool {
        let settings = &self.shared.settings;
        let (low_water, limit) = (settings.sendq / 4, settings.slow_limit);
        let (mut since, mut at) = (Instant::now(), self.written.load(Ordering::Relaxed));
        while self.queued.load(Ordering::Relaxed) >= low_water {
            let progress = self.written.load(Ordering::Relaxed);
            if progress != at {
                (since, at) = (Instant::now(), progress);
            } else if since.elapsed() > limit {
                self.stuck = true;
                self.error_and_close("SendQ exceeded");
                return false;
            }
            if self.tx.is_closed() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Writes the stream up to `seq` (what a command just did) before the next line is handled: a client
    /// sees its JOIN before the replies to what it sent after it, as from any IRC server.
    async fn catch_up(&mut self, seq: u64) {
        for _ in 0..64 {
            let Some(live) = &self.live else {
                return;
            };
            if live.cursor.seq >= seq || self.closing {
                return;
            }
            let (session, cursor, generation) = (live.session, live.cursor, live.generation);
            // Flow control as in the run loop: the next page waits for the writer to drain the last.
            if !self.wait_for_room().await {
                return;
            }
            let read = self
                .engine()
                .follow(
                    &session,
                    cursor,
                    READ_LIMIT,
                    Duration::from_millis(500),
                    generation,
                )
                .await;
            let empty = matches!(&read, Ok(r) if r.events.is_empty() && !r.reset);
            self.on_read(read).await;
            if empty {
                return;
            }
        }
    }

    fn refused(&mut self, e: &EngineError, about: Option<&str>) {
        let (code, text) = refusal(e);
        let line = if code == "NOTICE" {
            Line::new("NOTICE")
                .source(self.server().to_owned())
                .arg(self.me())
                .trailing(text)
        } else {
            let mut line = self.num(&code);
            if let Some(about) = about {
                line = line.arg(about);
            }
            line.trailing(text)
        };
        self.send(line);
    }

    fn cap(&mut self, m: &Message) {
        let sub = m.param(0).unwrap_or("").to_ascii_uppercase();
        let me = self.me();
        let server = self.server().to_owned();
        match sub.as_str() {
            "LS" => {
                if self.live.is_none() {
                    self.negotiating = true;
                }
                let v302 = m
                    .param(1)
                    .and_then(|v| v.parse::<u32>().ok())
                    .is_some_and(|v| v >= 302);
                let list = CAPS
                    .iter()
                    .map(|c| {
                        if *c == "sasl" && v302 {
                            "sasl=PLAIN".to_owned()
                        } else {
                            (*c).to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                self.send(
                    Line::new("CAP")
                        .source(server)
                        .arg(me)
                        .arg("LS")
                        .trailing(list),
                );
            }
            "LIST" => {
                let on = self.enabled().join(" ");
                self.send(
                    Line::new("CAP")
                        .source(server)
                        .arg(me)
                        .arg("LIST")
                        .trailing(on),
                );
            }
            "REQ" => {
                if self.live.is_none() {
                    self.negotiating = true;
                }
                let asked = m.param(1).unwrap_or("").to_owned();
                let names: Vec<&str> = asked.split(' ').filter(|c| !c.is_empty()).collect();
                let known = names
                    .iter()
                    .all(|c| CAPS.contains(&c.trim_start_matches('-')));
                if !known || names.is_empty() {
                    self.send(
                        Line::new("CAP")
                            .source(server)
                            .arg(me)
                            .arg("NAK")
                            .trailing(asked),
                    );
                    return;
                }
                for name in names {
                    let (on, name) = match name.strip_prefix('-') {
                        Some(n) => (false, n),
                        None => (true, name),
                    };
                    self.set_cap(name, on);
                }
                self.send(
                    Line::new("CAP")
                        .source(server)
                        .arg(me)
                        .arg("ACK")
                        .trailing(asked),
                );
            }
            "END" => self.negotiating = false,
            _ => {
                let line = self.num("410").arg(sub).trailing("Invalid CAP command");
                self.send(line);
            }
        }
    }

    fn enabled(&self) -> Vec<&'static str> {
        let c = self.caps;
        [
            ("account-tag", c.account_tag),
            ("away-notify", c.away_notify),
            ("batch", c.batch),
            ("draft/chathistory", c.chathistory),
            ("echo-message", c.echo_message),
            ("labeled-response", c.labeled_response),
            ("message-tags", c.message_tags),
            ("multi-prefix", c.multi_prefix),
            ("sasl", c.sasl),
            ("server-time", c.server_time),
        ]
        .into_iter()
        .filter_map(|(n, on)| on.then_some(n))
        .collect()
    }

    fn set_cap(&mut self, name: &str, on: bool) {
        let c = &mut self.caps;
        match name {
            "account-tag" => c.account_tag = on,
            "away-notify" => c.away_notify = on,
            "batch" => c.batch = on,
            "draft/chathistory" => c.chathistory = on,
            "echo-message" => c.echo_message = on,
            "labeled-response" => c.labeled_response = on,
            "message-tags" => c.message_tags = on,
            "multi-prefix" => c.multi_prefix = on,
            "sasl" => c.sasl = on,
            "server-time" => c.server_time = on,
            _ => {}
        }
    }

    async fn authenticate(&mut self, m: &Message) {
        let Some(arg) = m.param(0) else {
            return self.need_more("AUTHENTICATE");
        };
        if arg == "*" {
            self.sasl = Sasl::None;
            let line = self
                .num(ERR_SASLABORTED)
                .trailing("SASL authentication aborted");
            return self.send(line);
        }
        match std::mem::replace(&mut self.sasl, Sasl::None) {
            Sasl::Done(session, cursor) => {
                self.sasl = Sasl::Done(session, cursor);
                let line = self
                    .num(ERR_SASLALREADY)
                    .trailing("You have already authenticated");
                self.send(line);
            }
            Sasl::None => {
                if arg.eq_ignore_ascii_case("PLAIN") {
                    self.sasl = Sasl::Plain(String::new());
                    self.send(Line::new("AUTHENTICATE").arg("+"));
                } else {
                    let line = self
                        .num(RPL_SASLMECHS)
                        .arg("PLAIN")
                        .trailing("are available SASL mechanisms");
                    self.send(line);
                    let line = self
                        .num(ERR_SASLFAIL)
                        .trailing("SASL authentication failed");
                    self.send(line);
                }
            }
            Sasl::Plain(mut so_far) => {
                if arg != "+" {
                    so_far.push_str(arg);
                }
                if so_far.len() > SASL_MAX {
                    let line = self.num(ERR_SASLTOOLONG).trailing("SASL message too long");
                    return self.send(line);
                }
                if arg.len() == 400 {
                    // More pieces follow.
                    self.sasl = Sasl::Plain(so_far);
                    return;
                }
                self.sasl_plain(&so_far).await;
            }
        }
    }

    async fn sasl_plain(&mut self, encoded: &str) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        let parts: Option<(String, String)> = decoded.and_then(|d| {
            let mut it = d.split('\0');
            let _authzid = it.next()?;
            let authcid = it.next()?.to_owned();
            let password = it.next()?.to_owned();
            Some((authcid, password))
        });
        let Some((account, password)) = parts else {
            let line = self
                .num(ERR_SASLFAIL)
                .trailing("SASL authentication failed");
            return self.send(line);
        };
        let device = self.device();
        let engine = self.engine().clone();
        let result = if account.is_empty() {
            // No account named: the password is a session token.
            self.by_token(&password).await
        } else {
            engine
                .login_device(&account, &password, &device, Some(self.peer.ip()))
                .await
                .map(|(session, cursor, _)| (session, cursor))
        };
        match result {
            Ok((session, cursor)) => {
                let nick = irc_nick(&self.engine().directory().nick(session.user));
                let source = format!("{nick}!{}@account", session.user);
                let line = self
                    .num(RPL_LOGGEDIN)
                    .arg(source)
                    .arg(nick.clone())
                    .trailing(format!("You are now logged in as {nick}"));
                self.send(line);
                let line = self
                    .num(RPL_SASLSUCCESS)
                    .trailing("SASL authentication successful");
                self.send(line);
                self.sasl = Sasl::Done(session, cursor);
            }
            Err(e) => {
                let text = match e {
                    EngineError::RateLimited { .. } => e.to_string(),
                    _ => "SASL authentication failed".into(),
                };
                let line = self.num(ERR_SASLFAIL).trailing(text);
                self.send(line);
            }
        }
    }

    async fn by_token(&self, token: &str) -> Result<(Session, Cursor), EngineError> {
        let session = self.engine().authenticate(token).await?;
        let seq = self
            .engine()
            .cursor(session.client)
            .unwrap_or_else(|| self.engine().last_seq());
        Ok((
            session,
            Cursor {
                epoch: self.engine().epoch(),
                seq,
            },
        ))
    }

    /// The name this connection's client (device) has: `irc:` and the USER name, so that a client that
    /// logs in again with the same USER continues the same stream.
    fn device(&self) -> String {
        let ident = self.user.as_ref().map_or("irc", |(i, _)| i.as_str());
        format!("irc:{ident}")
    }

    async fn try_register(&mut self) {
        if self.live.is_some() || self.negotiating || self.nick.is_none() || self.user.is_none() {
            return;
        }
        let nick = self.me();
        let device = self.device();
        let engine = self.engine().clone();
        let pass = self.pass.take();
        let found = match std::mem::replace(&mut self.sasl, Sasl::None) {
            Sasl::Done(session, cursor) => Ok((session, Some(cursor), None)),
            _ => match pass.as_deref() {
                Some(p) if p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    self.by_token(p).await.map(|(s, c)| (s, Some(c), None))
                }
                Some(p) if p.starts_with("hashcash:") => engine
                    .guest_with_stamp(&nick, &device, Some(&p["hashcash:".len()..]))
                    .await
                    .map(|l| (l.session, None, Some(l.token))),
                Some(p) => engine
                    .login_device(&nick, p, &device, Some(self.peer.ip()))
                    .await
                    .map(|(s, c, _)| (s, Some(c), None)),
                None => engine
                    .guest(&nick, &device)
                    .await
                    .map(|l| (l.session, None, Some(l.token))),
            },
        };
        let (session, resumed, guest_token) = match found {
            Ok(found) => found,
            Err(EngineError::Refused(chat_core::Error::NickInUse)) => {
                let line = self
                    .num(ERR_NICKNAMEINUSE)
                    .arg(nick)
                    .trailing("Nickname is already in use");
                self.send(line);
                self.pass = pass;
                return;
            }
            Err(EngineError::HashcashRequired { bits, .. }) => {
                let (_, resource) = engine.hashcash();
                let text = format!(
                    "Guests need a proof of work here: PASS hashcash:<stamp>, a hashcash stamp of {bits} bits for resource {resource} (see the README's IRC section)"
                );
                let line = Line::new("NOTICE")
                    .source(self.server().to_owned())
                    .arg(nick)
                    .trailing(text);
                self.send(line);
                return self.error_and_close("Proof of work required");
            }
            Err(EngineError::InvalidCredentials | EngineError::InvalidToken) => {
                let line = self.num(ERR_PASSWDMISMATCH).trailing("Password incorrect");
                self.send(line);
                return self.error_and_close("Bad password");
            }
            Err(e) => {
                self.refused(&e, Some(&nick));
                if matches!(e, EngineError::Refused(_)) {
                    return;
                }
                return self.error_and_close("Cannot register");
            }
        };
        let _ = engine.command(&session, Command::Connect, None).await;
        let nick = irc_nick(&engine.directory().nick(session.user));
        self.nick = Some(nick);
        let last = engine.last_seq();
        let epoch = engine.epoch();
        let (cursor, playback_until) = match resumed {
            Some(c) if c.epoch == epoch && c.seq < last => (c, last),
            _ => (Cursor { epoch, seq: last }, 0),
        };
        self.live = Some(Live {
            session,
            cursor,
            generation: None,
            playback_until,
            batch: None,
        });
        self.confirmed = Some(cursor);
        self.welcome().await;
        if let Some(token) = guest_token {
            // A guest has no password: this token is how it continues its session (and what it missed)
            // from another connection. Only this connection is told.
            let text = format!(
                "To continue this guest session from another connection, send PASS {token} before NICK and USER"
            );
            let line = Line::new("NOTICE")
                .source(self.server().to_owned())
                .arg(self.me())
                .trailing(text);
            self.send(line);
        }
        self.burst().await;
        if playback_until > 0 {
            let text = format!(
                "Playing back what you missed: {} events since you were last here",
                playback_until - cursor.seq
            );
            let line = Line::new("NOTICE")
                .source(self.server().to_owned())
                .arg(self.me())
                .trailing(text);
            self.send(line);
            // Played back before anything the client sends next is answered.
            self.catch_up(playback_until).await;
        }
    }

    async fn welcome(&mut self) {
        let s = self.shared.settings.clone();
        let me = self.me();
        let host = match &self.live {
            Some(l) => source_of(&self.engine().directory(), l.session.user),
            None => me.clone(),
        };
        let line = self
            .num(RPL_WELCOME)
            .trailing(format!("Welcome to the {} IRC network, {host}", s.network));
        self.send(line);
        let line = self.num(RPL_YOURHOST).trailing(format!(
            "Your host is {}, running version chatd-{}",
            s.server_name, s.version
        ));
        self.send(line);
        let line = self
            .num(RPL_CREATED)
            .trailing(format!("This server was created {}", self.shared.started));
        self.send(line);
        let line = self
            .num(RPL_MYINFO)
            .arg(s.server_name.clone())
            .arg(format!("chatd-{}", s.version))
            .arg("i")
            .arg("biklmnostv")
            .arg("bklov");
        self.send(line);
        self.isupport();
        self.lusers().await;
        self.motd();
    }

    fn isupport(&mut self) {
        let network = self.shared.settings.network.replace(' ', "_");
        let tokens = [
            "AWAYLEN=390".to_owned(),
            "CASEMAPPING=ascii".into(),
            format!("CHATHISTORY={CHATHISTORY_MAX}"),
            "CHANLIMIT=#:".into(),
            "CHANMODES=b,k,l,imnst".into(),
            format!("CHANNELLEN={}", chat_core::CHANNEL_NAME_MAX + 1),
            "CHANTYPES=#".into(),
            "ELIST=".into(),
            "KICKLEN=390".into(),
            "MAXLIST=b:100".into(),
            "MODES=12".into(),
            "MSGREFTYPES=msgid,timestamp".into(),
            format!("NETWORK={network}"),
            format!("NICKLEN={}", chat_core::NICK_MAX),
            "PREFIX=(ov)@+".into(),
            "TARGMAX=PRIVMSG:4,NOTICE:4,JOIN:,PART:,KICK:4".into(),
            "TOPICLEN=390".into(),
            "UTF8ONLY".into(),
        ];
        let mut line = self.num(RPL_ISUPPORT);
        for t in tokens {
            line = line.arg(t);
        }
        let line = line.trailing("are supported by this server");
        self.send(line);
    }

    async fn lusers(&mut self) {
        let (users, channels) = self
            .engine()
            .query(|core| {
                let users = core.users().filter(|u| !u.released && !u.system).count();
                let channels = core
                    .channels()
                    .filter(|c| c.kind == ChannelKind::Text && c.name.starts_with('#'))
                    .count();
                (users, channels)
            })
            .await
            .unwrap_or((0, 0));
        let local = self.shared.open.load(Ordering::Relaxed);
        let line = self.num(RPL_LUSERCLIENT).trailing(format!(
            "There are {users} users and 0 invisible on 1 servers"
        ));
        self.send(line);
        let line = self
            .num(RPL_LUSEROP)
            .arg("0")
            .trailing("operator(s) online");
        self.send(line);
        let line = self
            .num(RPL_LUSERCHANNELS)
            .arg(channels.to_string())
            .trailing("channels formed");
        self.send(line);
        let line = self
            .num(RPL_LUSERME)
            .trailing(format!("I have {local} clients and 0 servers"));
        self.send(line);
        let line = self
            .num(RPL_LOCALUSERS)
            .arg(local.to_string())
            .arg(local.to_string())
            .trailing(format!("Current local users {local}"));
        self.send(line);
        let line = self
            .num(RPL_GLOBALUSERS)
            .arg(users.to_string())
            .arg(users.to_string())
            .trailing(format!("Current global users {users}"));
        self.send(line);
    }

    fn motd(&mut self) {
        let motd = self.shared.settings.motd.clone();
        if motd.trim().is_empty() {
            let line = self.num(ERR_NOMOTD).trailing("MOTD File is missing");
            return self.send(line);
        }
        let server = self.server().to_owned();
        let line = self
            .num(RPL_MOTDSTART)
            .trailing(format!("- {server} Message of the day -"));
        self.send(line);
        for text in motd.lines() {
            for piece in line::split_text(text, 80)
                .into_iter()
                .chain(text.is_empty().then(String::new))
            {
                let line = self.num(RPL_MOTD).trailing(format!("- {piece}"));
                self.send(line);
            }
        }
        let line = self.num(RPL_ENDOFMOTD).trailing("End of /MOTD command.");
        self.send(line);
    }

    /// The channels the user is on, as joins with their topic and names: what a client needs to show the
    /// session as it is (also what a client that comes back sees before the playback).
    async fn burst(&mut self) {
        let Some(live) = &self.live else {
            return;
        };
        let user = live.session.user;
        let channels = self.my_channels(user).await;
        let source = source_of(&self.engine().directory(), user);
        for name in channels {
            self.send(Line::new("JOIN").source(source.clone()).arg(name.clone()));
            self.topic_reply(&name, false).await;
            self.names(&name).await;
        }
    }

    /// The network channels `user` is on, by name.
    async fn my_channels(&self, user: UserId) -> Vec<String> {
        self.engine()
            .query(move |core| {
                core.channels()
                    .filter(|c| {
                        c.kind == ChannelKind::Text
                            && c.name.starts_with('#')
                            && core.is_member(user, c.id)
                    })
                    .map(|c| c.name.clone())
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default()
    }

    async fn join(&mut self, m: &Message) {
        let Some(channels) = m.param(0) else {
            return self.need_more("JOIN");
        };
        if channels == "0" {
            let Some(user) = self.live.as_ref().map(|l| l.session.user) else {
                return;
            };
            let names = self.my_channels(user).await;
            for name in names {
                let c = Command::Part {
                    channel: ChannelRef::Name(name.clone()),
                    reason: None,
                };
                self.run_command(c, Some(&name)).await;
            }
            return;
        }
        let keys: Vec<&str> = m
            .param(1)
            .map(|k| k.split(',').collect())
            .unwrap_or_default();
        for (i, channel) in channels.split(',').filter(|c| !c.is_empty()).enumerate() {
            let key = keys
                .get(i)
                .filter(|k| !k.is_empty())
                .map(|k| (*k).to_owned());
            let c = Command::Join {
                channel: channel.to_owned(),
                key,
            };
            self.run_command(c, Some(channel)).await;
        }
    }

    async fn privmsg(&mut self, m: &Message) {
        let notice = m.command == "NOTICE";
        let Some(targets) = m.param(0).filter(|t| !t.is_empty()) else {
            if !notice {
                let line = self
                    .num(ERR_NORECIPIENT)
                    .trailing(format!("No recipient given ({})", m.command));
                self.send(line);
            }
            return;
        };
        let Some(text) = m.param(1).filter(|t| !t.is_empty()) else {
            if !notice {
                let line = self.num(ERR_NOTEXTTOSEND).trailing("No text to send");
                self.send(line);
            }
            return;
        };
        let (kind, body) = match text.strip_prefix("\u{1}ACTION") {
            Some(rest) => (
                MessageKind::Action,
                rest.trim_start_matches(' ')
                    .trim_end_matches('\u{1}')
                    .to_owned(),
            ),
            None if notice => (MessageKind::Notice, text.to_owned()),
            None => (MessageKind::Message, text.to_owned()),
        };
        let reply_to = m
            .tag("+draft/reply")
            .flatten()
            .and_then(|r| r.parse::<u64>().ok())
            .and_then(MessageId::from_raw);
        for target in targets.split(',').filter(|t| !t.is_empty()).take(4) {
            let to = if target.starts_with('#') {
                Target::Channel(ChannelRef::Name(target.to_owned()))
            } else {
                Target::User(UserRef::Nick(core_nick(target)))
            };
            let command = Command::Send {
                to,
                message: Outgoing {
                    kind: Some(kind),
                    body: body.clone(),
                    reply_to,
                    ..Outgoing::default()
                },
            };
            let session = match &self.live {
                Some(l) => l.session,
                None => return,
            };
            match self.engine().command(&session, command, None).await {
                Ok(reply) => {
                    let seq = reply.seq;
                    if let Some(Created::Message(id)) = reply.created {
                        self.sent.push_back(id);
                        if self.sent.len() > SENT_KEPT {
                            self.sent.pop_front();
                        }
                        if self.caps.echo_message
                            && let Some(label) = self.label.clone()
                        {
                            self.echo_labels.push((id, label));
                        }
                    }
                    self.catch_up(seq).await;
                }
                // A NOTICE is never answered with an error (RFC 2812).
                Err(_) if notice => {}
                Err(e) => self.refused(&e, Some(target)),
            }
        }
    }

    /// TAGMSG: a reaction (`+draft/react` on `+draft/reply`) or typing (`+typing`).
    async fn tagmsg(&mut self, m: &Message) {
        let Some(target) = m.param(0).map(str::to_owned) else {
            return self.need_more("TAGMSG");
        };
        let reply = m
            .tag("+draft/reply")
            .flatten()
            .and_then(|r| r.parse::<u64>().ok())
            .and_then(MessageId::from_raw);
        if let (Some(Some(emoji)), Some(message)) = (m.tag("+draft/react"), reply) {
            let c = Command::React {
                message,
                emoji: emoji.to_owned(),
            };
            self.run_command(c, Some(&target)).await;
        } else if let (Some(Some(emoji)), Some(message)) = (m.tag("+draft/unreact"), reply) {
            let c = Command::Unreact {
                message,
                emoji: emoji.to_owned(),
                user: None,
            };
            self.run_command(c, Some(&target)).await;
        } else if matches!(m.tag("+typing"), Some(Some("active"))) && target.starts_with('#') {
            let c = Command::Typing {
                channel: ChannelRef::Name(target.clone()),
            };
            // Typing is best effort: a refusal (not on the channel) is not worth a numeric.
            if let Some(l) = &self.live {
                let _ = self.engine().command(&l.session, c, None).await;
            }
        }
    }

    async fn topic(&mut self, m: &Message) {
        let Some(channel) = m.param(0).map(str::to_owned) else {
            return self.need_more("TOPIC");
        };
        match m.param(1) {
            None => self.topic_reply(&channel, true).await,
            Some(text) => {
                let c = Command::Topic {
                    channel: ChannelRef::Name(channel.clone()),
                    topic: text.to_owned(),
                };
                self.run_command(c, Some(&channel)).await;
            }
        }
    }

    /// 332 and 333 for a channel's topic (331 when it has none and `asked`).
    async fn topic_reply(&mut self, channel: &str, asked: bool) {
        let name = channel.to_owned();
        let topic = self
            .engine()
            .query(move |core| core.channel_by_name(&name).map(|c| c.topic.clone()))
            .await
            .ok()
            .flatten();
        match topic {
            None if asked => {
                let line = self
                    .num(ERR_NOSUCHCHANNEL)
                    .arg(channel)
                    .trailing("No such channel");
                self.send(line);
            }
            Some(Some(t)) => {
                let line = self.num(RPL_TOPIC).arg(channel).trailing(t.text.clone());
                self.send(line);
                let by = irc_nick(&self.engine().directory().nick(t.by));
                let line = self
                    .num(RPL_TOPICWHOTIME)
                    .arg(channel)
                    .arg(by)
                    .arg((t.at / 1000).to_string());
                self.send(line);
            }
            Some(None) if asked => {
                let line = self
                    .num(RPL_NOTOPIC)
                    .arg(channel)
                    .trailing("No topic is set");
                self.send(line);
            }
            _ => {}
        }
    }

    /// 353 (as many as needed) and 366 for a channel.
    async fn names(&mut self, channel: &str) {
        let name = channel.to_owned();
        let Some(user) = self.live.as_ref().map(|l| l.session.user) else {
            return;
        };
        let found = self
            .engine()
            .query(move |core| {
                let c = core.channel_by_name(&name)?;
                let on = core.is_member(user, c.id);
                // A secret channel's members are shown only to its own (RFC 2812).
                if c.flags.secret && !on {
                    return None;
                }
                let members: Vec<(UserId, bool, bool)> = core
                    .members(c.id)
                    .map(|(u, m)| (u, m.op, m.voice))
                    .collect();
                Some((c.name.clone(), c.flags.secret, members))
            })
            .await
            .ok()
            .flatten();
        if let Some((name, secret, members)) = found {
            let multi = self.caps.multi_prefix;
            let nicks: Vec<String> = {
                let dir = self.engine().directory();
                members
                    .iter()
                    .map(|(u, op, voice)| {
                        let mut prefix = String::new();
                        if *op {
                            prefix.push('@');
                        }
                        if *voice && (multi || !*op) {
                            prefix.push('+');
                        }
                        format!("{prefix}{}", irc_nick(&dir.nick(*u)))
                    })
                    .collect()
            };
            let kind = if secret { "@" } else { "=" };
            let mut chunk = String::new();
            for nick in nicks {
                if chunk.len() + nick.len() + 1 > 400 {
                    let line = self
                        .num(RPL_NAMREPLY)
                        .arg(kind)
                        .arg(name.clone())
                        .trailing(std::mem::take(&mut chunk));
                    self.send(line);
                }
                if !chunk.is_empty() {
                    chunk.push(' ');
                }
                chunk.push_str(&nick);
            }
            if !chunk.is_empty() {
                let line = self
                    .num(RPL_NAMREPLY)
                    .arg(kind)
                    .arg(name.clone())
                    .trailing(chunk);
                self.send(line);
            }
            let line = self
                .num(RPL_ENDOFNAMES)
                .arg(name)
                .trailing("End of /NAMES list");
            self.send(line);
        } else {
            let line = self
                .num(RPL_ENDOFNAMES)
                .arg(channel)
                .trailing("End of /NAMES list");
            self.send(line);
        }
    }

    async fn mode(&mut self, m: &Message) {
        let Some(target) = m.param(0).map(str::to_owned) else {
            return self.need_more("MODE");
        };
        let Some(user) = self.live.as_ref().map(|l| l.session.user) else {
            return;
        };
        if !target.starts_with('#') {
            if core_nick(&target).eq_ignore_ascii_case(&core_nick(&self.me())) {
                if m.params.len() > 1 {
                    let line = self.num(ERR_UMODEUNKNOWNFLAG).trailing("Unknown MODE flag");
                    self.send(line);
                } else {
                    let line = self.num(RPL_UMODEIS).arg("+");
                    self.send(line);
                }
            } else {
                let line = self
                    .num(ERR_USERSDONTMATCH)
                    .trailing("Cant change mode for other users");
                self.send(line);
            }
            return;
        }
        let modes = m.param(1).unwrap_or("").to_owned();
        if modes.is_empty() || ((modes == "b" || modes == "+b") && m.params.len() == 2) {
            let name = target.clone();
            let found = self
                .engine()
                .query(move |core| {
                    let c = core.channel_by_name(&name)?;
                    let bans: Vec<(String, u64)> =
                        c.bans.iter().map(|b| (b.mask.clone(), b.at)).collect();
                    Some((
                        c.name.clone(),
                        core.mode_string(c.id, user),
                        c.created_at,
                        bans,
                    ))
                })
                .await
                .ok()
                .flatten();
            let Some((name, mode_string, created, bans)) = found else {
                let line = self
                    .num(ERR_NOSUCHCHANNEL)
                    .arg(target)
                    .trailing("No such channel");
                return self.send(line);
            };
            if modes.is_empty() {
                let mut line = self.num(RPL_CHANNELMODEIS).arg(name.clone());
                for part in mode_string.split(' ').filter(|p| !p.is_empty()) {
                    line = line.arg(part);
                }
                if mode_string.is_empty() {
                    line = line.arg("+");
                }
                self.send(line);
                let line = self
                    .num(RPL_CREATIONTIME)
                    .arg(name)
                    .arg((created / 1000).to_string());
                self.send(line);
            } else {
                for (mask, at) in bans {
                    let line = self
                        .num(RPL_BANLIST)
                        .arg(name.clone())
                        .arg(mask)
                        .arg(self.server().to_owned())
                        .arg((at / 1000).to_string());
                    self.send(line);
                }
                let line = self
                    .num(RPL_ENDOFBANLIST)
                    .arg(name)
                    .trailing("End of channel ban list");
                self.send(line);
            }
            return;
        }
        let args: Vec<String> = m.params.iter().skip(2).map(|a| core_nick(a)).collect();
        let c = Command::Mode {
            channel: ChannelRef::Name(target.clone()),
            modes,
            args,
        };
        self.run_command(c, Some(&target)).await;
    }

    /// `CHATHISTORY LATEST|BEFORE|AFTER|AROUND|BETWEEN target ref [ref] limit` (IRCv3 draft/chathistory):
    /// a page of the target's history in a `chathistory` batch. References are `msgid=`, `timestamp=` or
    /// (LATEST) `*`. Errors are standard replies: `FAIL CHATHISTORY <code> ...`.
    async fn chathistory(&mut self, m: &Message) {
        let Some(me) = self.live.as_ref().map(|l| l.session.user) else {
            return;
        };
        let sub = m.param(0).unwrap_or("").to_ascii_uppercase();
        let between = sub == "BETWEEN";
        let wanted = if between { 5 } else { 4 };
        if !["LATEST", "BEFORE", "AFTER", "AROUND", "BETWEEN"].contains(&sub.as_str()) {
            return self.fail("CHATHISTORY", "INVALID_PARAMS", &sub, "Unknown subcommand");
        }
        if m.params.len() < wanted {
            return self.fail(
                "CHATHISTORY",
                "NEED_MORE_PARAMS",
                &sub,
                "Missing parameters",
            );
        }
        let target = m.params[1].clone();
        let limit = m.params[wanted - 1]
            .parse::<usize>()
            .ok()
            .filter(|l| *l > 0)
            .map(|l| l.min(CHATHISTORY_MAX));
        let Some(limit) = limit else {
            return self.fail("CHATHISTORY", "INVALID_PARAMS", &target, "Invalid limit");
        };
        let first = msgref(&m.params[2], sub == "LATEST");
        let second = if between {
            msgref(&m.params[3], false)
        } else {
            Some(Bound::None)
        };
        let (Some(first), Some(second)) = (first, second) else {
            return self.fail(
                "CHATHISTORY",
                "INVALID_MSGREFTYPE",
                &target,
                "Message references are msgid= or timestamp=",
            );
        };
        let name = core_nick(&target);
        let channel = self
            .engine()
            .query(move |core| {
                if name.starts_with('#') {
                    let c = core.channel_by_name(&name)?;
                    let perms = core.channel_permissions(me, c.id);
                    (core.is_member(me, c.id)
                        && perms.contains(
                            chat_core::Permissions::VIEW_CHANNEL
                                | chat_core::Permissions::READ_MESSAGE_HISTORY,
                        ))
                    .then_some(c.id)
                } else {
                    let other = core.user_by_nick(&name)?;
                    core.dm_channel(me, other.id)
                }
            })
            .await
            .ok()
            .flatten();
        let Some(channel) = channel else {
            return self.fail(
                "CHATHISTORY",
                "INVALID_TARGET",
                &target,
                "Messages could not be retrieved",
            );
        };
        // BETWEEN takes its references in either order; the page is read from the first toward the second.
        let ascending = first
            .after()
            .zip(second.before())
            .is_some_and(|(a, b)| a < b);
        let (before, after, around) = match sub.as_str() {
            "LATEST" => (None, first.after(), None),
            "BEFORE" => (first.before(), None, None),
            "AFTER" => (None, first.after(), None),
            "AROUND" => (None, None, first.at()),
            _ if ascending => (second.before(), first.after(), None),
            _ => (first.before(), second.after(), None),
        };
        if sub == "AROUND" && around.is_none() {
            return self.fail(
                "CHATHISTORY",
                "INVALID_MSGREFTYPE",
                &target,
                "AROUND needs a msgid=",
            );
        }
        // A whole page is read and cut here, from the side the subcommand reads from.
        // The store reads from one bound (before, else after, else the newest); the other bound is applied
        // here. LATEST reads the newest page and keeps what is after its reference.
        let (read_before, read_after) = match sub.as_str() {
            "LATEST" => (None, None),
            _ if between && ascending => (None, after),
            _ => (before, if before.is_some() { None } else { after }),
        };
        let query = chat_engine::HistoryQuery {
            channel,
            before: read_before,
            after: read_after,
            around,
            limit: CHATHISTORY_MAX,
        };
        let page = match self.engine().history(query).await {
            Ok(page) => page,
            Err(_) => {
                return self.fail(
                    "CHATHISTORY",
                    "MESSAGE_ERROR",
                    &target,
                    "Messages could not be retrieved",
                );
            }
        };
        // AFTER and BETWEEN read forward from their lower bound; LATEST and BEFORE give the newest first.
        let mut page = page;
        // Joins, parts and the like are stored as system messages; IRC's history holds what was said.
        page.retain(|m| {
            matches!(
                m.kind,
                MessageKind::Message | MessageKind::Action | MessageKind::Notice
            ) && before.is_none_or(|b| m.id < b)
                && after.is_none_or(|a| m.id > a)
        });
        page.sort_by_key(|m| m.id);
        let forward = sub == "AFTER" || (between && ascending);
        if sub == "AROUND" {
            // As many on each side of the reference as fit.
            let at = page
                .iter()
                .position(|m| Some(m.id) == around)
                .unwrap_or(page.len() / 2);
            let start = at
                .saturating_sub(limit / 2)
                .min(page.len().saturating_sub(limit));
            page = page.into_iter().skip(start).take(limit).collect();
        } else if page.len() > limit {
            if forward {
                page.truncate(limit);
            } else {
                page.drain(..page.len() - limit);
            }
        }
        let lines: Vec<Line> = {
            let dir = self.engine().directory();
            let view = View {
                dir: &dir,
                server: self.server(),
                me,
                caps: self.caps,
                playback: false,
            };
            page.iter()
                .flat_map(|m| {
                    view.message_lines(&crate::render::Said {
                        ts: m.ts,
                        id: m.id,
                        channel: m.channel,
                        author: m.author,
                        kind: m.kind,
                        body: &m.body,
                        reply_to: m.reply_to,
                        attachments: &m.attachments,
                    })
                })
                .collect()
        };
        let batch = self.caps.batch.then(|| self.batch_id());
        if let Some(id) = &batch {
            self.send(
                Line::new("BATCH")
                    .source(self.server().to_owned())
                    .arg(format!("+{id}"))
                    .arg("chathistory")
                    .arg(target.clone()),
            );
        }
        for line in lines {
            let line = match &batch {
                Some(id) => line.tag("batch", Some(id.clone())),
                None => line,
            };
            self.send(line);
        }
        if let Some(id) = batch {
            self.send(
                Line::new("BATCH")
                    .source(self.server().to_owned())
                    .arg(format!("-{id}")),
            );
        }
    }

    /// An IRCv3 standard reply: `FAIL <command> <code> <context> :<text>`.
    fn fail(&mut self, command: &str, code: &str, context: &str, text: &str) {
        let line = Line::new("FAIL")
            .source(self.server().to_owned())
            .arg(command)
            .arg(code)
            .arg(context)
            .trailing(text);
        self.send(line);
    }

    async fn who(&mut self, m: &Message) {
        let mask = m.param(0).unwrap_or("*").to_owned();
        let Some(me) = self.live.as_ref().map(|l| l.session.user) else {
            return;
        };
        let wanted = mask.clone();
        let rows = self
            .engine()
            .query(move |core| {
                let mut rows = Vec::new();
                if wanted.starts_with('#') {
                    if let Some(c) = core.channel_by_name(&wanted)
                        && (!c.flags.secret || core.is_member(me, c.id))
                    {
                        for (u, modes) in core.members(c.id) {
                            if let Some(user) = core.user(u) {
                                rows.push((
                                    c.name.clone(),
                                    u,
                                    user.away.is_some(),
                                    modes.op,
                                    modes.voice,
                                    user.display_name.clone(),
                                ));
                            }
                        }
                    }
                } else if let Some(user) = core
                    .user_by_nick(&core_nick(&wanted))
                    .filter(|u| !u.released)
                {
                    rows.push((
                        "*".to_owned(),
                        user.id,
                        user.away.is_some(),
                        false,
                        false,
                        user.display_name.clone(),
                    ));
                }
                rows
            })
            .await
            .unwrap_or_default();
        let server = self.server().to_owned();
        let lines: Vec<Line> = {
            let dir = self.engine().directory();
            rows.into_iter()
                .map(|(channel, u, away, op, voice, display)| {
                    let source = source_of(&dir, u);
                    let (nick, rest) = source.split_once('!').unwrap_or((&source, ""));
                    let (ident, host) = rest.split_once('@').unwrap_or((rest, ""));
                    let mut flags = String::from(if away { "G" } else { "H" });
                    if op {
                        flags.push('@');
                    }
                    if voice && (self.caps.multi_prefix || !op) {
                        flags.push('+');
                    }
                    Line::new(RPL_WHOREPLY)
                        .source(server.clone())
                        .arg(self.me())
                        .arg(channel)
                        .arg(ident.to_owned())
                        .arg(host.to_owned())
                        .arg(server.clone())
                        .arg(nick.to_owned())
                        .arg(flags)
                        .trailing(format!("0 {}", display.unwrap_or_else(|| nick.to_owned())))
                })
                .collect()
        };
        for line in lines {
            self.send(line);
        }
        let line = self.num(RPL_ENDOFWHO).arg(mask).trailing("End of WHO list");
        self.send(line);
    }

    async fn whois(&mut self, m: &Message) {
        // `WHOIS server nick` asks a server; there is one.
        let Some(nick) = m.params.last().cloned() else {
            let line = self.num(ERR_NONICKNAMEGIVEN).trailing("No nickname given");
            return self.send(line);
        };
        let Some(me) = self.live.as_ref().map(|l| l.session.user) else {
            return;
        };
        let wanted = core_nick(&nick);
        let found = self
            .engine()
            .query(move |core| {
                let user = core.user_by_nick(&wanted).filter(|u| !u.released)?;
                let channels: Vec<String> = core
                    .channels()
                    .filter(|c| {
                        c.kind == ChannelKind::Text
                            && c.name.starts_with('#')
                            && core.is_member(user.id, c.id)
                    })
                    .filter(|c| !c.flags.secret || core.is_member(me, c.id))
                    .map(|c| {
                        let modes = core
                            .members(c.id)
                            .find(|(u, _)| *u == user.id)
                            .map(|(_, m)| m);
                        let prefix = match modes {
                            Some(m) if m.op => "@",
                            Some(m) if m.voice => "+",
                            _ => "",
                        };
                        format!("{prefix}{}", c.name)
                    })
                    .collect();
                let last_seen = core.clients_of(user.id).map(|c| c.last_seen).max();
                Some((
                    user.id,
                    user.away.clone(),
                    user.display_name.clone(),
                    user.created_at,
                    last_seen,
                    user.is_guest(),
                    user.system,
                    channels,
                ))
            })
            .await
            .ok()
            .flatten();
        let Some((id, away, display, created, last_seen, guest, system, channels)) = found else {
            let line = self
                .num(ERR_NOSUCHNICK)
                .arg(nick.clone())
                .trailing("No such nick/channel");
            self.send(line);
            let line = self
                .num(RPL_ENDOFWHOIS)
                .arg(nick)
                .trailing("End of /WHOIS list");
            return self.send(line);
        };
        let source = source_of(&self.engine().directory(), id);
        let (shown, rest) = source.split_once('!').unwrap_or((&source, ""));
        let (ident, host) = rest.split_once('@').unwrap_or((rest, ""));
        let (shown, ident, host) = (shown.to_owned(), ident.to_owned(), host.to_owned());
        let line = self
            .num(RPL_WHOISUSER)
            .arg(shown.clone())
            .arg(ident)
            .arg(host)
            .arg("*")
            .trailing(display.unwrap_or_else(|| shown.clone()));
        self.send(line);
        if !channels.is_empty() {
            let line = self
                .num(RPL_WHOISCHANNELS)
                .arg(shown.clone())
                .trailing(channels.join(" "));
            self.send(line);
        }
        let network = self.shared.settings.network.clone();
        let line = self
            .num(RPL_WHOISSERVER)
            .arg(shown.clone())
            .arg(self.server().to_owned())
            .trailing(network);
        self.send(line);
        if system {
            let line = self
                .num(RPL_WHOISOPERATOR)
                .arg(shown.clone())
                .trailing("is the server's own user");
            self.send(line);
        }
        if let Some(away) = away {
            let line = self.num(RPL_AWAY).arg(shown.clone()).trailing(away);
            self.send(line);
        }
        if let Some(seen) = last_seen {
            let idle = chat_engine::now_ms().saturating_sub(seen) / 1000;
            let line = self
                .num(RPL_WHOISIDLE)
                .arg(shown.clone())
                .arg(idle.to_string())
                .arg((created / 1000).to_string())
                .trailing("seconds idle, signon time");
            self.send(line);
        }
        if !guest && !system {
            let line = self
                .num(RPL_WHOISACCOUNT)
                .arg(shown.clone())
                .arg(shown.clone())
                .trailing("is logged in as");
            self.send(line);
        }
        let line = self
            .num(RPL_ENDOFWHOIS)
            .arg(shown)
            .trailing("End of /WHOIS list");
        self.send(line);
    }

    async fn list(&mut self) {
        let Some(me) = self.live.as_ref().map(|l| l.session.user) else {
            return;
        };
        let rows = self
            .engine()
            .query(move |core| {
                core.list_channels(me)
                    .map(|c| {
                        (
                            c.name.clone(),
                            core.member_count(c.id),
                            c.topic.as_ref().map(|t| t.text.clone()).unwrap_or_default(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
        let line = self
            .num(RPL_LISTSTART)
            .arg("Channel")
            .trailing("Users  Name");
        self.send(line);
        for (name, count, topic) in rows {
            let line = self
                .num(RPL_LIST)
                .arg(name)
                .arg(count.to_string())
                .trailing(topic);
            self.send(line);
        }
        let line = self.num(RPL_LISTEND).trailing("End of /LIST");
        self.send(line);
    }

    async fn on_read(&mut self, read: Result<StreamRead, EngineError>) {
        let read = match read {
            Ok(read) => read,
            Err(EngineError::InvalidToken) => {
                return self.error_and_close("Your session has ended");
            }
            Err(_) => return self.error_and_close("Server unavailable"),
        };
        let Some(live) = &self.live else {
            return;
        };
        let (session, playback_until) = (live.session, live.playback_until);
        if read.reset {
            // Events were skipped (retention passed this client by): say so, and go on from now.
            let line = Line::new("NOTICE")
                .source(self.server().to_owned())
                .arg(self.me())
                .trailing("Some history is no longer kept and could not be played back");
            self.send(line);
        }
        let done = self.live.as_ref().map_or(0, |l| l.cursor.seq);
        for event in &read.events {
            // A read made before a catch-up may bring events the catch-up wrote already.
            if event.is_durable() && event.seq <= done {
                continue;
            }
            let playback = event.is_durable() && event.seq <= playback_until;
            self.event(event, session.user, playback).await;
        }
        if read.cursor.seq >= playback_until
            && let Some((id, _)) = self.live.as_mut().and_then(|l| l.batch.take())
        {
            self.send(
                Line::new("BATCH")
                    .source(self.server().to_owned())
                    .arg(format!("-{id}")),
            );
        }
        if let Some(live) = &mut self.live {
            if read.cursor.seq >= live.cursor.seq || read.reset {
                live.cursor = read.cursor;
            }
            live.generation = Some(read.live);
            if read.cursor.seq >= live.playback_until {
                live.playback_until = 0;
            }
        }
        if let Some(live) = &self.live {
            let cursor = live.cursor;
            let _ = self.tx.send(Out::Mark(session, cursor));
            // At most once a second while the stream delivers: a PING after these lines, whose PONG shows
            // the client read them.
            if self.probe.is_none() && self.probed_at.is_none_or(|at| at.elapsed() >= PROBE_EVERY) {
                self.batches += 1;
                let token = self.batches;
                self.probe = Some((token, cursor));
                self.probed_at = Some(Instant::now());
                self.enqueue_stream(
                    Line::new("PING")
                        .trailing(format!("chatd-{token}"))
                        .encode(),
                );
            }
        }
    }

    async fn event(&mut self, event: &Event, me: UserId, playback: bool) {
        // Own messages sent from here are echoed only with echo-message.
        let mut label = None;
        if let EventKind::MessageCreated { message } = &event.kind
            && message.author == me
            && let Some(i) = self.sent.iter().position(|id| *id == message.id)
        {
            if !self.caps.echo_message {
                self.sent.remove(i);
                return;
            }
            if let Some(j) = self
                .echo_labels
                .iter()
                .position(|(id, _)| *id == message.id)
            {
                label = Some(self.echo_labels.remove(j).1);
            }
        }
        if let EventKind::NickChanged { user, new, .. } = &event.kind
            && *user == me
        {
            self.nick = Some(irc_nick(new));
        }
        // A live channel event: encoded once for every connection with these capabilities.
        if !playback && label.is_none() {
            let key = (event.seq, self.caps.render_key());
            let shared = {
                let dir = self.engine().directory();
                crate::render::shared_by_all(&dir, event).then(|| {
                    let cached = self
                        .shared
                        .rendered
                        .read()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get(key);
                    cached.unwrap_or_else(|| {
                        let view = View {
                            dir: &dir,
                            server: self.server(),
                            me,
                            caps: self.caps,
                            playback,
                        };
                        let lines: Arc<[String]> =
                            view.lines(event).iter().map(Line::encode).collect();
                        self.shared
                            .rendered
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .put(key, Arc::clone(&lines));
                        lines
                    })
                })
            };
            if let Some(lines) = shared {
                let bytes = lines.iter().map(String::len).sum();
                self.queued.fetch_add(bytes, Ordering::Relaxed);
                self.stream_queued.fetch_add(bytes, Ordering::Relaxed);
                let _ = self.tx.send(Out::Shared(lines));
                return self.after_event(event, me).await;
            }
        }
        let lines = {
            let dir = self.engine().directory();
            let view = View {
                dir: &dir,
                server: self.server(),
                me,
                caps: self.caps,
                playback,
            };
            view.lines(event)
        };
        for (i, mut line) in lines.into_iter().enumerate() {
            if i == 0
                && let Some(l) = label.take()
            {
                line = line.tag("label", Some(l));
            }
            if playback && self.caps.batch {
                line = self.in_playback_batch(line);
            }
            self.enqueue_stream(line.encode());
        }
        if !playback {
            self.after_event(event, me).await;
        }
    }

    /// My own join: the channel's topic and names follow, as after a JOIN on any server.
    async fn after_event(&mut self, event: &Event, me: UserId) {
        if let EventKind::Joined { channel, user, .. } = &event.kind
            && *user == me
        {
            let name = self
                .engine()
                .directory()
                .channel(*channel)
                .map(|c| c.name.to_string());
            if let Some(name) = name.filter(|n| n.starts_with('#')) {
                self.topic_reply(&name, false).await;
                self.names(&name).await;
            }
        }
    }

    /// Puts a played-back line in a `chathistory` batch of its target, opening one when the target changes.
    fn in_playback_batch(&mut self, line: Line) -> Line {
        let target = line.first_arg().unwrap_or("*").to_owned();
        let open = self.live.as_ref().and_then(|l| l.batch.clone());
        let id = match open {
            Some((id, t)) if t == target => id,
            other => {
                if let Some((old, _)) = other {
                    self.enqueue_stream(
                        Line::new("BATCH")
                            .source(self.server().to_owned())
                            .arg(format!("-{old}"))
                            .encode(),
                    );
                }
                let id = self.batch_id();
                self.enqueue_stream(
                    Line::new("BATCH")
                        .source(self.server().to_owned())
                        .arg(format!("+{id}"))
                        .arg("chathistory")
                        .arg(target.clone())
                        .encode(),
                );
                if let Some(live) = &mut self.live {
                    live.batch = Some((id.clone(), target));
                }
                id
            }
        };
        line.tag("batch", Some(id))
    }
}

async fn next_read(pending: &mut Option<ReadFuture>) -> Result<StreamRead, EngineError> {
    match pending {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A CHATHISTORY message reference.
enum Bound {
    /// `*` (LATEST): no bound.
    None,
    /// `msgid=`.
    Id(MessageId),
    /// `timestamp=`, in Unix milliseconds.
    Time(u64),
}

/// Parses a reference; `*` is accepted only where `star` allows it.
fn msgref(text: &str, star: bool) -> Option<Bound> {
    if text == "*" {
        return star.then_some(Bound::None);
    }
    if let Some(id) = text.strip_prefix("msgid=") {
        return id
            .parse::<u64>()
            .ok()
            .and_then(MessageId::from_raw)
            .map(Bound::Id);
    }
    let at = humantime::parse_rfc3339_weak(text.strip_prefix("timestamp=")?).ok()?;
    let ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    u64::try_from(ms).ok().map(Bound::Time)
}

/// The lowest id a snowflake made at `ms` can have.
fn first_id_at(ms: u64) -> Option<MessageId> {
    let since = ms.saturating_sub(chat_core::DISCORD_EPOCH);
    MessageId::from_raw((since << 22).max(1))
}

impl Bound {
    /// As an exclusive upper bound: messages before it.
    fn before(&self) -> Option<MessageId> {
        match self {
            Bound::None => None,
            Bound::Id(id) => Some(*id),
            Bound::Time(ms) => first_id_at(*ms),
        }
    }

    /// As an exclusive lower bound: messages after it.
    fn after(&self) -> Option<MessageId> {
        match self {
            Bound::None => None,
            Bound::Id(id) => Some(*id),
            // After the last id of that millisecond.
            Bound::Time(ms) => {
                first_id_at(ms.saturating_add(1)).and_then(|id| MessageId::from_raw(id.get() - 1))
            }
        }
    }

    fn at(&self) -> Option<MessageId> {
        match self {
            Bound::Id(id) => Some(*id),
            _ => None,
        }
    }
}
