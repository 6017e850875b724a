//! The IRC door over raw sockets against the real binary: registration, every command and numeric, the
//! IRCv3 capabilities, bad input and floods, the other doors, and the server-held session (a client that
//! comes back is played what it missed, once).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::gateway::{ALL, Gw};
use crate::harness::Server;

/// A raw IRC client: lines out, lines in.
struct Irc {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    /// Every line read so far, in order.
    seen: Vec<String>,
}

impl Irc {
    async fn connect(server: &Server) -> Irc {
        let addr: SocketAddr = server.irc.expect("the server runs the IRC door");
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the IRC door");
        let (read, write) = stream.into_split();
        Irc {
            read: BufReader::new(read),
            write,
            seen: Vec::new(),
        }
    }

    /// A connection whose kernel receive buffer is `bytes` (a client that reads slowly fills it soon).
    async fn connect_small(server: &Server, bytes: u32) -> Irc {
        let addr: SocketAddr = server.irc.expect("the server runs the IRC door");
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        let stream = socket.connect(addr).await.expect("connect to the IRC door");
        let (read, write) = stream.into_split();
        Irc {
            read: BufReader::with_capacity(1024, read),
            write,
            seen: Vec::new(),
        }
    }

    async fn send(&mut self, line: &str) {
        self.write
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write");
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.expect("write");
    }

    /// The next line (without CRLF), or `None` when the server closed the connection.
    async fn next(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.read.read_line(&mut line))
            .await
            .expect("a line within 10 s")
            .expect("read");
        if n == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        self.seen.push(line.clone());
        Some(line)
    }

    /// Reads until a line whose command (after tags and source) is `command`, with `needle` in it.
    async fn until(&mut self, command: &str, needle: &str) -> String {
        loop {
            let line = self.next().await.unwrap_or_else(|| {
                panic!(
                    "closed while waiting for {command} {needle}: {:#?}",
                    self.seen
                )
            });
            if command_of(&line) == command && line.contains(needle) {
                return line;
            }
        }
    }

    /// Every line up to and including the first with `command`.
    async fn through(&mut self, command: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.next().await.expect("open");
            let done = command_of(&line) == command;
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// Sends a PING and returns every line that came before its PONG: what the server had to say by then.
    async fn sync(&mut self) -> Vec<String> {
        self.send("PING :sync").await;
        let mut lines = Vec::new();
        loop {
            let Some(line) = self.next().await else {
                panic!(
                    "closed while syncing, after: {:#?}",
                    &lines[lines.len().saturating_sub(5)..]
                );
            };
            if command_of(&line) == "PONG" && line.ends_with(":sync") {
                return lines;
            }
            lines.push(line);
        }
    }

    /// Registers with `NICK` and `USER` (after `before`, e.g. CAP or PASS lines) and reads to the end of the
    /// MOTD; returns the lines.
    async fn register(&mut self, nick: &str, user: &str, before: &[&str]) -> Vec<String> {
        for line in before {
            self.send(line).await;
        }
        self.send(&format!("NICK {nick}")).await;
        self.send(&format!("USER {user} 0 * :{nick} realname"))
            .await;
        let mut lines = Vec::new();
        loop {
            let line = self
                .next()
                .await
                .unwrap_or_else(|| panic!("closed: {lines:#?}"));
            let cmd = command_of(&line).to_owned();
            lines.push(line);
            if cmd == "376" || cmd == "422" {
                return lines;
            }
        }
    }

    /// Every line until the server closes the connection (a reset ends it too).
    async fn closed(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match tokio::time::timeout(Duration::from_secs(10), self.read.read_line(&mut line))
                .await
                .expect("a line within 10 s")
            {
                Ok(0) | Err(_) => return lines,
                Ok(_) => lines.push(line.trim_end_matches(['\r', '\n']).to_owned()),
            }
        }
    }
}

/// A line's command: the word after its tags and source.
fn command_of(line: &str) -> &str {
    let mut rest = line;
    if rest.starts_with('@') {
        rest = rest.split_once(' ').map_or("", |(_, r)| r);
    }
    if rest.starts_with(':') {
        rest = rest.split_once(' ').map_or("", |(_, r)| r);
    }
    rest.split(' ').next().unwrap_or("")
}

/// A tag's value on a line.
fn tag<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let tags = line.strip_prefix('@')?.split_once(' ')?.0;
    tags.split(';').find_map(|t| match t.split_once('=') {
        Some((k, v)) if k == key => Some(v),
        _ => None,
    })
}

/// The trailing parameter.
fn trailing(line: &str) -> &str {
    let body = if line.starts_with('@') {
        line.split_once(' ').map_or("", |(_, r)| r)
    } else {
        line
    };
    let body = body
        .strip_prefix(':')
        .map_or(body, |b| b.split_once(' ').map_or("", |(_, r)| r));
    body.split_once(" :").map_or("", |(_, t)| t)
}

async fn start() -> Server {
    Server::start(&[("IRC_LISTEN", "127.0.0.1:0"), ("MOTD", "Be kind.\nTalk.")]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_says_welcome_isupport_lusers_and_motd() {
    let server = start().await;
    let mut c = Irc::connect(&server).await;
    // Nothing but registration before it.
    c.send("JOIN #early").await;
    assert!(c.until("451", "").await.contains("You have not registered"));
    c.send("CAP LS 302").await;
    let ls = c.until("CAP", "LS").await;
    for cap in [
        "account-tag",
        "away-notify",
        "batch",
        "echo-message",
        "labeled-response",
        "message-tags",
        "multi-prefix",
        "sasl=PLAIN",
        "server-time",
    ] {
        assert!(trailing(&ls).split(' ').any(|c| c == cap), "{cap} in {ls}");
    }
    c.send("CAP REQ :server-time bogus-cap").await;
    assert!(
        c.until("CAP", "NAK")
            .await
            .ends_with(":server-time bogus-cap")
    );
    // Registration waits for CAP END.
    let lines = c
        .register("alice", "alice", &["CAP REQ :server-time", "CAP END"])
        .await;
    let codes: Vec<&str> = lines.iter().map(|l| command_of(l)).collect();
    for code in [
        "001", "002", "003", "004", "005", "251", "252", "254", "255", "265", "266", "375", "372",
        "376",
    ] {
        assert!(codes.contains(&code), "{code} in {lines:#?}");
    }
    let welcome = lines.iter().find(|l| command_of(l) == "001").unwrap();
    assert!(
        welcome.starts_with(":chatd 001 alice :Welcome"),
        "{welcome}"
    );
    assert!(
        welcome.contains("alice!") && welcome.contains("@guest"),
        "{welcome}"
    );
    let isupport = lines.iter().find(|l| command_of(l) == "005").unwrap();
    for token in [
        "CASEMAPPING=ascii",
        "CHANTYPES=#",
        "CHANMODES=b,k,l,imnst",
        "PREFIX=(ov)@+",
        "NICKLEN=32",
        "CHANNELLEN=64",
        "TOPICLEN=390",
        "NETWORK=chatd",
    ] {
        assert!(
            isupport.split(' ').any(|t| t == token),
            "{token} in {isupport}"
        );
    }
    let motd: Vec<&str> = lines
        .iter()
        .filter(|l| command_of(l) == "372")
        .map(|l| trailing(l))
        .collect();
    assert_eq!(motd, vec!["- Be kind.", "- Talk."]);
    // A guest is told how to continue its session elsewhere.
    let notice = c.until("NOTICE", "PASS").await;
    assert!(trailing(&notice).contains("send PASS "), "{notice}");
    // After registration.
    c.send("USER again 0 * :x").await;
    assert!(c.until("462", "").await.contains("reregister"));
    c.send("FROBNICATE now").await;
    assert!(
        c.until("421", "FROBNICATE")
            .await
            .contains("Unknown command")
    );
    c.send("PING :token-1").await;
    assert_eq!(c.until("PONG", "").await, ":chatd PONG chatd :token-1");
    c.send("LUSERS").await;
    assert!(trailing(&c.until("251", "").await).contains("users"));
    c.send("MOTD").await;
    c.until("376", "").await;

    // A taken nick: 433, and the client may choose another.
    let mut d = Irc::connect(&server).await;
    d.send("NICK alice").await;
    d.send("USER d 0 * :d").await;
    assert!(d.until("433", "alice").await.contains("already in use"));
    d.send("NICK b@d").await;
    assert!(d.until("432", "b@d").await.contains(":"));
    let lines = d.register("dora", "d", &[]).await;
    assert!(
        lines.iter().any(|l| l.starts_with(":chatd 001 dora ")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_commands_answer_with_their_numerics() {
    let server = start().await;
    let mut a = Irc::connect(&server).await;
    a.register(
        "alice",
        "alice",
        &["CAP LS 302", "CAP REQ :multi-prefix", "CAP END"],
    )
    .await;
    let mut b = Irc::connect(&server).await;
    b.register("bob", "bob", &[]).await;

    a.send("JOIN #rust").await;
    let join = a.until("JOIN", "#rust").await;
    assert!(
        join.starts_with(":alice!") && join.contains("@guest JOIN #rust"),
        "{join}"
    );
    assert!(a.until("353", "#rust").await.ends_with(":@alice"));
    a.until("366", "#rust").await;
    a.send("TOPIC #rust :All about Rust").await;
    assert!(
        a.until("TOPIC", "#rust")
            .await
            .ends_with("TOPIC #rust :All about Rust")
    );

    // Bob joins after the topic: JOIN, then 332/333, then the names, in that order and before anything
    // he asked after the JOIN.
    b.send("JOIN #rust").await;
    b.send("MODE #rust").await;
    let lines = b.through("329").await;
    let order: Vec<&str> = lines
        .iter()
        .map(|l| command_of(l))
        .filter(|c| ["JOIN", "332", "333", "353", "366", "324"].contains(c))
        .collect();
    assert_eq!(
        order,
        vec!["JOIN", "332", "333", "353", "366", "324"],
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("353 bob = #rust :@alice bob")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains(" 324 bob #rust +nt")),
        "{lines:#?}"
    );
    assert!(a.until("JOIN", "#rust").await.starts_with(":bob!"));

    // +m: bob may not speak (404) until voiced.
    a.send("MODE #rust +m").await;
    assert!(b.until("MODE", "#rust").await.ends_with("MODE #rust +m"));
    b.send("PRIVMSG #rust :can I speak?").await;
    assert!(b.until("404", "#rust").await.contains("Cannot send"));
    // Not an operator: 482.
    b.send("MODE #rust +o bob").await;
    assert!(b.until("482", "#rust").await.contains(":"));
    a.send("MODE #rust +v bob").await;
    assert!(b.until("MODE", "+v").await.ends_with("MODE #rust +v bob"));
    b.send("PRIVMSG #rust :thanks").await;
    assert!(a.until("PRIVMSG", "thanks").await.starts_with(":bob!"));
    // multi-prefix: alice, an operator with voice too, is @+ to a client that asked for it.
    a.send("MODE #rust +v alice").await;
    a.until("MODE", "+v alice").await;
    a.send("NAMES #rust").await;
    assert!(a.until("353", "#rust").await.ends_with(":@+alice +bob"));
    b.send("NAMES #rust").await;
    assert!(b.until("353", "#rust").await.ends_with(":@alice +bob"));

    // WHO and WHOIS, with away.
    b.send("AWAY :lunch").await;
    assert!(b.until("306", "").await.contains("away"));
    a.send("WHO #rust").await;
    let who = a.through("315").await;
    assert!(
        who.iter()
            .any(|l| l.contains(" 352 alice #rust ") && l.contains(" bob G+ :0 ")),
        "{who:#?}"
    );
    assert!(who.iter().any(|l| l.contains(" alice H@+ :0 ")), "{who:#?}");
    a.send("WHOIS bob").await;
    let whois = a.through("318").await;
    let codes: Vec<&str> = whois.iter().map(|l| command_of(l)).collect();
    for code in ["311", "319", "312", "301", "317", "318"] {
        assert!(codes.contains(&code), "{code} in {whois:#?}");
    }
    assert!(
        whois.iter().any(|l| l.ends_with("301 alice bob :lunch")),
        "{whois:#?}"
    );
    assert!(
        whois.iter().any(|l| l.ends_with("319 alice bob :+#rust")),
        "{whois:#?}"
    );
    b.send("AWAY").await;
    b.until("305", "").await;
    a.send("WHOIS nobody-here").await;
    assert!(a.until("401", "nobody-here").await.contains("No such nick"));

    // LIST, bans, invites, kicks.
    a.send("LIST").await;
    let list = a.through("323").await;
    assert!(
        list.iter()
            .any(|l| l.ends_with("322 alice #rust 2 :All about Rust")),
        "{list:#?}"
    );
    a.send("MODE #rust +b spammer*").await;
    a.until("MODE", "+b").await;
    a.send("MODE #rust b").await;
    let bans = a.through("368").await;
    assert!(
        bans.iter()
            .any(|l| l.contains(" 367 alice #rust spammer* chatd ")),
        "{bans:#?}"
    );
    a.send("KICK #rust bob :too loud").await;
    assert!(
        b.until("KICK", "#rust")
            .await
            .ends_with("KICK #rust bob :too loud")
    );
    a.send("MODE #rust +i").await;
    a.until("MODE", "+i").await;
    b.send("JOIN #rust").await;
    assert!(b.until("473", "#rust").await.contains(":"));
    a.send("INVITE bob #rust").await;
    assert!(a.until("341", "bob").await.ends_with("341 alice bob #rust"));
    assert!(b.until("INVITE", "#rust").await.starts_with(":alice!"));
    b.send("JOIN #rust").await;
    b.until("366", "#rust").await;

    // NICK, seen by the channel.
    b.send("NICK robert").await;
    assert!(a.until("NICK", "robert").await.starts_with(":bob!"));
    b.send("PART #rust :bye").await;
    assert!(a.until("PART", "#rust").await.starts_with(":robert!"));
    b.send("PART #rust").await;
    assert!(b.until("442", "#rust").await.contains(":"));
    b.send("TOPIC #nowhere").await;
    b.until("403", "#nowhere").await;
    b.send("JOIN").await;
    b.until("461", "JOIN").await;
    b.send("PRIVMSG #rust").await;
    b.until("412", "").await;
    b.send("MODE robert +x").await;
    b.until("501", "").await;
    b.send("MODE alice").await;
    b.until("502", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ircv3_tags_echo_labels_and_batches() {
    let server = start().await;
    server.register("carol", "a long enough password").await;
    let mut a = Irc::connect(&server).await;
    a.register(
        "alice",
        "alice",
        &["CAP LS 302", "CAP REQ :server-time message-tags echo-message labeled-response batch account-tag away-notify", "CAP END"],
    )
    .await;
    let mut c = Irc::connect(&server).await;
    c.register("carol", "laptop", &["PASS :a long enough password"])
        .await;
    a.send("JOIN #v3").await;
    a.until("366", "#v3").await;
    c.send("JOIN #v3").await;
    c.until("366", "#v3").await;

    // A labeled PRIVMSG with echo-message: the echo is the answer and carries the label, the time and the id.
    a.send("@label=m1 PRIVMSG #v3 :hello v3").await;
    let echo = a.until("PRIVMSG", "hello v3").await;
    assert_eq!(tag(&echo, "label"), Some("m1"), "{echo}");
    let time = tag(&echo, "time").expect("server-time");
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );
    let msgid = tag(&echo, "msgid").expect("msgid").to_owned();
    // Carol (no caps) sees no tags.
    let plain = c.until("PRIVMSG", "hello v3").await;
    assert!(plain.starts_with(":alice!"), "{plain}");
    // A labeled command answered with one line: the label on it; with several: a labeled-response batch;
    // with none: ACK.
    a.send("@label=p1 PING :x").await;
    assert_eq!(tag(&a.until("PONG", "").await, "label"), Some("p1"));
    a.send("@label=n1 NAMES #v3").await;
    let open = a.until("BATCH", "labeled-response").await;
    assert_eq!(tag(&open, "label"), Some("n1"), "{open}");
    let id = open
        .split(' ')
        .find_map(|p| p.strip_prefix('+'))
        .expect("batch id")
        .to_owned();
    let names = a.until("353", "#v3").await;
    assert_eq!(tag(&names, "batch"), Some(id.as_str()), "{names}");
    a.until("366", "#v3").await;
    assert!(
        a.until("BATCH", &format!("-{id}"))
            .await
            .ends_with(&format!("BATCH -{id}"))
    );
    a.send("@label=x1 AWAY").await;
    let ack = a.until("305", "").await;
    assert_eq!(tag(&ack, "label"), Some("x1"));
    // account-tag: carol is an account.
    c.send("PRIVMSG #v3 :from an account").await;
    let from_carol = a.until("PRIVMSG", "from an account").await;
    assert_eq!(tag(&from_carol, "account"), Some("carol"), "{from_carol}");
    // away-notify.
    c.send("AWAY :gone fishing").await;
    assert!(
        a.until("AWAY", "fishing").await.starts_with("@"),
        "tags on AWAY"
    );
    // A reaction as a client tag; carol without message-tags reads a notice.
    a.send(&format!("@+draft/react=👍;+draft/reply={msgid} TAGMSG #v3"))
        .await;
    let notice = c.until("NOTICE", "reacted").await;
    assert!(
        trailing(&notice).contains("alice reacted 👍 to a message"),
        "{notice}"
    );
    // Carol's reply as a reply, seen with its +draft/reply by alice.
    c.send(&format!("@+draft/reply={msgid} PRIVMSG #v3 :a reply"))
        .await;
    let reply = a.until("PRIVMSG", "a reply").await;
    assert_eq!(tag(&reply, "+draft/reply"), Some(msgid.as_str()), "{reply}");
    // SASL PLAIN: carol on another device.
    let mut s = Irc::connect(&server).await;
    s.send("CAP LS 302").await;
    s.send("CAP REQ :sasl").await;
    s.until("CAP", "ACK").await;
    s.send("AUTHENTICATE PLAIN").await;
    assert_eq!(s.next().await.as_deref(), Some("AUTHENTICATE +"));
    // "\0carol\0wrong" then the right one.
    use base64::Engine as _;
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    s.send(&format!("AUTHENTICATE {}", b64("\0carol\0wrong password")))
        .await;
    s.until("904", "").await;
    s.send("AUTHENTICATE PLAIN").await;
    s.next().await;
    s.send(&format!(
        "AUTHENTICATE {}",
        b64("carol\0carol\0a long enough password")
    ))
    .await;
    assert!(
        s.until("900", "")
            .await
            .contains("You are now logged in as carol")
    );
    s.until("903", "").await;
    let lines = s.register("ignored", "phone", &["CAP END"]).await;
    assert!(
        lines.iter().any(|l| l.starts_with(":chatd 001 carol ")),
        "{lines:#?}"
    );
    // The account's channels come with it.
    assert!(s.until("JOIN", "#v3").await.starts_with(":carol!"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_a_flood_disconnects() {
    let server = Server::start(&[("IRC_LISTEN", "127.0.0.1:0"), ("IRC_FLOOD", "10/5")]).await;
    let mut c = Irc::connect(&server).await;
    c.register("eve", "eve", &[]).await;
    // Over 512 bytes: 417, and the connection goes on.
    c.send(&format!("PRIVMSG #x :{}", "x".repeat(600))).await;
    c.until("417", "").await;
    // A line longer than any tags allow, without a line end for a while, is skipped to its end.
    c.send_raw(&vec![b'y'; 20_000]).await;
    c.send_raw(b"\r\n").await;
    c.until("417", "").await;
    c.send_raw(b"PRIVMSG eve :\xff\xfe bad\r\n").await;
    assert!(trailing(&c.until("NOTICE", "UTF-8").await).contains("not UTF-8"));
    c.send_raw(b"PRIVMSG eve :a\0b\r\n").await;
    c.until("NOTICE", "NUL").await;
    c.send_raw(b"@only-tags\r\n").await;
    c.until("NOTICE", "no command").await;
    c.send("PRIVMSG").await;
    c.until("411", "").await;
    // Still fine.
    let lines = c.sync().await;
    assert!(lines.iter().all(|l| command_of(l) != "ERROR"), "{lines:#?}");

    // A flood: 200 lines at once, far past 10 + 60.
    let mut f = Irc::connect(&server).await;
    f.register("flood", "flood", &[]).await;
    let burst: String = (0..200)
        .map(|i| format!("PRIVMSG flood :{i}\r\n"))
        .collect();
    f.send_raw(burst.as_bytes()).await;
    let rest = f.closed().await;
    assert!(
        rest.iter()
            .any(|l| l == "ERROR :Closing link: Excess Flood"),
        "{rest:#?}"
    );
    // Others are unaffected.
    let lines = c.sync().await;
    assert!(lines.iter().all(|l| command_of(l) != "ERROR"), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_long_poll_and_gateway_users_talk_both_ways() {
    let server = start().await;
    let lp = server.guest("lena").await;
    let bot = server.register("botty", "a long enough password").await;
    server
        .ok(&lp, json!({"command": "JOIN", "to": "#mix"}))
        .await;
    server
        .ok(&bot, json!({"command": "JOIN", "to": "#mix"}))
        .await;
    let mut gw = Gw::connect(&server).await;
    gw.identify(&bot.token, ALL).await;
    let mut i = Irc::connect(&server).await;
    i.register(
        "ian",
        "ian",
        &["CAP LS 302", "CAP REQ :message-tags", "CAP END"],
    )
    .await;
    i.send("JOIN #mix").await;
    i.until("366", "#mix").await;

    // IRC -> long-poll and gateway.
    i.send("PRIVMSG #mix :hello from irc").await;
    i.send("PRIVMSG #mix :\u{1}ACTION waves\u{1}").await;
    let mut lena = lp.clone();
    let mut got = Vec::new();
    for _ in 0..20 {
        got.extend(server.poll(&mut lena, 2).await);
        if got.iter().any(|e| e["type"] == "action") {
            break;
        }
    }
    let msg = got
        .iter()
        .find(|e| e["body"] == "hello from irc")
        .expect("the message on long-poll");
    assert_eq!(msg["from"], "ian");
    assert_eq!(msg["to"], "#mix");
    assert!(
        got.iter()
            .any(|e| e["type"] == "action" && e["body"] == "waves"),
        "{got:?}"
    );
    let create = loop {
        let create = gw.until("MESSAGE_CREATE").await;
        // (Ian's join is a system message first.)
        if create["d"]["content"] != "" {
            break create;
        }
    };
    assert_eq!(create["d"]["content"], "hello from irc");
    assert_eq!(create["d"]["author"]["username"], "ian");

    // Long-poll and gateway -> IRC, with an edit and a deletion shown as notices.
    let (_, sent) = server
        .post(
            "/api/v1/messages",
            Some(&lp.token),
            json!({"command": "PRIVMSG", "to": "#mix", "body": "hi from http"}),
        )
        .await;
    let id = sent["id"].as_str().unwrap().to_owned();
    let line = i.until("PRIVMSG", "hi from http").await;
    assert!(
        line.contains(":lena!") && line.ends_with("PRIVMSG #mix :hi from http"),
        "{line}"
    );
    assert_eq!(tag(&line, "msgid"), Some(id.as_str()));
    server
        .ok(
            &lp,
            json!({"command": "EDIT", "ref": id, "body": "hi from http, edited"}),
        )
        .await;
    let edit = i.until("NOTICE", "edited").await;
    assert!(
        edit.ends_with("NOTICE #mix :lena edited a message: hi from http, edited"),
        "{edit}"
    );
    server
        .ok(&lp, json!({"command": "DELETE", "ref": id}))
        .await;
    assert!(
        i.until("NOTICE", "deleted")
            .await
            .ends_with(":lena deleted a message")
    );
    let channel_id = create["d"]["channel_id"].as_str().unwrap().to_owned();
    let (status, _, _) = server
        .raw(
            reqwest::Method::POST,
            &format!("/api/v10/channels/{channel_id}/messages"),
            Some(&bot.token),
            Some(json!({"content": "hi from a bot"}).to_string().into_bytes()),
        )
        .await;
    assert!(status.is_success(), "{status}");
    assert!(
        i.until("PRIVMSG", "hi from a bot")
            .await
            .contains(":botty!")
    );
    // A DM both ways.
    i.send("PRIVMSG lena :psst").await;
    let mut dm = Vec::new();
    for _ in 0..10 {
        dm.extend(server.poll(&mut lena, 2).await);
        if dm.iter().any(|e| e["body"] == "psst") {
            break;
        }
    }
    assert!(
        dm.iter()
            .any(|e| e["body"] == "psst" && e["from"] == "ian" && e["to"] == "lena"),
        "{dm:?}"
    );
    server
        .ok(
            &lp,
            json!({"command": "PRIVMSG", "to": "ian", "body": "back at you"}),
        )
        .await;
    assert!(
        i.until("PRIVMSG", "back at you")
            .await
            .ends_with("PRIVMSG ian :back at you")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_comes_back_is_played_what_it_missed_once() {
    let mut server = start().await;
    server.register("pat", "a long enough password").await;
    let talker = server.guest("tom").await;
    server
        .ok(&talker, json!({"command": "JOIN", "to": "#back"}))
        .await;
    let mut p = Irc::connect(&server).await;
    p.register("pat", "laptop", &["PASS :a long enough password"])
        .await;
    p.send("JOIN #back").await;
    p.until("366", "#back").await;
    p.send("PRIVMSG #back :before I go").await;
    p.sync().await;
    // The client drops (no QUIT), the others talk meanwhile.
    drop(p);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 1..=3 {
        server
            .ok(
                &talker,
                json!({"command": "PRIVMSG", "to": "#back", "body": format!("missed {i}")}),
            )
            .await;
    }
    server
        .ok(
            &talker,
            json!({"command": "PRIVMSG", "to": "pat", "body": "missed dm"}),
        )
        .await;

    // Back with the same USER (the same device), with batch and server-time: the channel as it is, then
    // what was missed in chathistory batches, each once, in order.
    let mut p = Irc::connect(&server).await;
    p.register(
        "pat",
        "laptop",
        &[
            "CAP LS 302",
            "CAP REQ :batch server-time",
            "CAP END",
            "PASS :a long enough password",
        ],
    )
    .await;
    let lines = p.sync().await;
    assert!(lines.iter().any(|l| l.contains("JOIN #back")), "{lines:#?}");
    let played: Vec<&String> = lines
        .iter()
        .filter(|l| command_of(l) == "PRIVMSG")
        .collect();
    let bodies: Vec<&str> = played.iter().map(|l| trailing(l)).collect();
    assert_eq!(
        bodies,
        vec!["missed 1", "missed 2", "missed 3", "missed dm"],
        "{lines:#?}"
    );
    assert!(
        played
            .iter()
            .all(|l| tag(l, "time").is_some() && tag(l, "batch").is_some()),
        "{played:#?}"
    );
    let opens: Vec<&String> = lines
        .iter()
        .filter(|l| command_of(l) == "BATCH" && l.contains(" +"))
        .collect();
    assert_eq!(
        opens.len(),
        2,
        "one batch for #back, one for the DM: {lines:#?}"
    );
    assert!(
        opens[0].ends_with("chathistory #back") && opens[1].ends_with("chathistory pat"),
        "{opens:#?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| command_of(l) == "BATCH" && l.contains(" -"))
            .count(),
        2
    );
    // Its own message before it left is not played again.
    assert!(
        !lines.iter().any(|l| l.contains("before I go")),
        "{lines:#?}"
    );
    drop(p);

    // Again, without server-time: nothing new to play; then one missed line, with its time in the text.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut p = Irc::connect(&server).await;
    p.register("pat", "laptop", &["PASS :a long enough password"])
        .await;
    let lines = p.sync().await;
    assert!(
        !lines.iter().any(|l| command_of(l) == "PRIVMSG"),
        "{lines:#?}"
    );
    drop(p);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server
        .ok(
            &talker,
            json!({"command": "PRIVMSG", "to": "#back", "body": "one more"}),
        )
        .await;

    // Across a restart of the server too.
    server.restart().await;
    let mut p = Irc::connect(&server).await;
    p.register("pat", "laptop", &["PASS :a long enough password"])
        .await;
    let lines = p.sync().await;
    let played: Vec<&str> = lines
        .iter()
        .filter(|l| command_of(l) == "PRIVMSG")
        .map(|l| trailing(l))
        .collect();
    assert_eq!(played.len(), 1, "{lines:#?}");
    assert!(
        played[0].starts_with('[') && played[0].ends_with("] one more"),
        "{played:?}"
    );

    // A guest continues its session with the token it was told.
    let mut g = Irc::connect(&server).await;
    g.register("gus", "gus", &[]).await;
    let notice = g.until("NOTICE", "PASS").await;
    let token = trailing(&notice)
        .split(' ')
        .find(|w| w.len() == 64)
        .expect("a token")
        .to_owned();
    g.send("JOIN #back").await;
    g.until("366", "#back").await;
    drop(g);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server
        .ok(
            &talker,
            json!({"command": "PRIVMSG", "to": "#back", "body": "for gus"}),
        )
        .await;
    let mut g = Irc::connect(&server).await;
    let lines = g
        .register("whatever", "gus", &[&format!("PASS {token}")])
        .await;
    assert!(
        lines.iter().any(|l| l.starts_with(":chatd 001 gus ")),
        "{lines:#?}"
    );
    let lines = g.sync().await;
    let played: Vec<&str> = lines
        .iter()
        .filter(|l| command_of(l) == "PRIVMSG")
        .map(|l| trailing(l))
        .collect();
    assert_eq!(played.len(), 1, "{lines:#?}");
    assert!(played[0].ends_with("for gus"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_quit_frees_its_nick_and_the_server_says_goodbye_on_shutdown() {
    let mut server = start().await;
    let mut a = Irc::connect(&server).await;
    a.register("quitter", "q", &[]).await;
    a.send("QUIT :see you").await;
    let rest = a.closed().await;
    assert!(
        rest.iter()
            .any(|l| l == "ERROR :Closing link: Quit: see you"),
        "{rest:#?}"
    );
    // The nick is free again at once.
    let mut b = Irc::connect(&server).await;
    let lines = b.register("quitter", "q", &[]).await;
    assert!(
        lines.iter().any(|l| l.starts_with(":chatd 001 quitter ")),
        "{lines:#?}"
    );
    // A SIGTERM: every connection is told before the server stops.
    let stop = tokio::spawn(async move {
        server.terminate().await;
        server
    });
    let rest = b.closed().await;
    assert!(
        rest.iter()
            .any(|l| l == "ERROR :Closing link: Server shutting down"),
        "{rest:#?}"
    );
    let _server = stop.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_over_tls_with_the_configured_certificate() {
    use std::sync::Arc;
    use tokio_rustls::rustls;

    let dir = tempfile::tempdir().expect("temp dir");
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let server = Server::start(&[
        ("IRC_LISTEN", "127.0.0.1:0"),
        ("IRC_TLS_CERT", cert_path.to_str().unwrap()),
        ("IRC_TLS_KEY", key_path.to_str().unwrap()),
    ])
    .await;
    let addr = server.irc.unwrap();

    #[allow(deprecated, reason = "the ring provider, as the server uses")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("a TLS handshake");
    let (read, mut write) = tokio::io::split(tls);
    write
        .write_all(b"NICK tess\r\nUSER tess 0 * :Tess\r\nPING :over-tls\r\n")
        .await
        .unwrap();
    let mut read = BufReader::new(read);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), read.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {lines:#?}");
        let line = line.trim_end().to_owned();
        let done = line.ends_with("PONG chatd :over-tls");
        lines.push(line);
        if done {
            break;
        }
    }
    assert!(
        lines.iter().any(|l| l.starts_with(":chatd 001 tess ")),
        "{lines:#?}"
    );

    // Plain text on the TLS port gets no welcome.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"NICK plain\r\nUSER plain 0 * :p\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut buf),
    )
    .await;
    assert!(!String::from_utf8_lossy(&buf).contains(" 001 "), "{buf:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chathistory_pages_a_targets_history() {
    let server = start().await;
    let talker = server.guest("tina").await;
    server
        .ok(&talker, json!({"command": "JOIN", "to": "#hist"}))
        .await;
    server
        .ok(&talker, json!({"command": "JOIN", "to": "#closed"}))
        .await;
    let mut ids = Vec::new();
    for i in 1..=10 {
        let (_, v) = server
            .post(
                "/api/v1/messages",
                Some(&talker.token),
                json!({"command": "PRIVMSG", "to": "#hist", "body": format!("m{i}")}),
            )
            .await;
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let mut c = Irc::connect(&server).await;
    let lines = c
        .register(
            "hal",
            "hal",
            &[
                "CAP LS 302",
                "CAP REQ :draft/chathistory batch server-time message-tags",
                "CAP END",
            ],
        )
        .await;
    let isupport: String = lines
        .iter()
        .filter(|l| command_of(l) == "005")
        .cloned()
        .collect();
    assert!(
        isupport.contains(" CHATHISTORY=100 ")
            && isupport.contains(" MSGREFTYPES=msgid,timestamp "),
        "{isupport}"
    );
    c.send("JOIN #hist").await;
    c.until("366", "#hist").await;

    async fn page(c: &mut Irc, request: &str) -> Vec<String> {
        c.send(request).await;
        let open = c.until("BATCH", "chathistory").await;
        let id = open
            .split(' ')
            .find_map(|p| p.strip_prefix('+'))
            .unwrap()
            .to_owned();
        let mut bodies = Vec::new();
        loop {
            let line = c.next().await.unwrap();
            if command_of(&line) == "BATCH" {
                assert!(line.ends_with(&format!("-{id}")), "{line}");
                return bodies;
            }
            assert_eq!(tag(&line, "batch"), Some(id.as_str()), "{line}");
            assert!(
                tag(&line, "msgid").is_some() && tag(&line, "time").is_some(),
                "{line}"
            );
            bodies.push(trailing(&line).to_owned());
        }
    }
    assert_eq!(
        page(&mut c, "CHATHISTORY LATEST #hist * 3").await,
        ["m8", "m9", "m10"]
    );
    assert_eq!(
        page(
            &mut c,
            &format!("CHATHISTORY LATEST #hist msgid={} 50", ids[7])
        )
        .await,
        ["m9", "m10"]
    );
    assert_eq!(
        page(
            &mut c,
            &format!("CHATHISTORY BEFORE #hist msgid={} 2", ids[7])
        )
        .await,
        ["m6", "m7"]
    );
    assert_eq!(
        page(
            &mut c,
            &format!("CHATHISTORY AFTER #hist msgid={} 2", ids[1])
        )
        .await,
        ["m3", "m4"]
    );
    assert_eq!(
        page(
            &mut c,
            &format!(
                "CHATHISTORY BETWEEN #hist msgid={} msgid={} 10",
                ids[0], ids[4]
            )
        )
        .await,
        ["m2", "m3", "m4"]
    );
    assert_eq!(
        page(
            &mut c,
            &format!(
                "CHATHISTORY BETWEEN #hist msgid={} msgid={} 2",
                ids[4], ids[0]
            )
        )
        .await,
        ["m3", "m4"]
    );
    assert_eq!(
        page(
            &mut c,
            &format!("CHATHISTORY AROUND #hist msgid={} 3", ids[4])
        )
        .await,
        ["m4", "m5", "m6"]
    );
    assert_eq!(
        page(
            &mut c,
            "CHATHISTORY AFTER #hist timestamp=2000-01-01T00:00:00.000Z 2"
        )
        .await,
        ["m1", "m2"]
    );
    // What hal may not read, and bad requests: standard replies.
    c.send("CHATHISTORY LATEST #closed * 5").await;
    assert!(c.until("FAIL", "INVALID_TARGET").await.contains("#closed"));
    c.send("CHATHISTORY LATEST #hist * lots").await;
    c.until("FAIL", "INVALID_PARAMS").await;
    c.send("CHATHISTORY BEFORE #hist * 5").await;
    c.until("FAIL", "INVALID_MSGREFTYPE").await;
    c.send("CHATHISTORY LATEST #hist").await;
    c.until("FAIL", "NEED_MORE_PARAMS").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_resumes_from_its_cursor() {
    let server = Server::start(&[
        ("IRC_LISTEN", "127.0.0.1:0"),
        ("IRC_SENDQ", "16KiB"),
        ("IRC_SENDQ_TIMEOUT", "1s"),
    ])
    .await;
    server.register("sal", "a long enough password").await;
    let talker = server.guest("tex").await;
    server
        .ok(&talker, json!({"command": "JOIN", "to": "#slow"}))
        .await;
    let mut s = Irc::connect_small(&server, 4096).await;
    s.register("sal", "laptop", &["PASS :a long enough password"])
        .await;
    s.send("JOIN #slow").await;
    s.until("366", "#slow").await;
    // Sal stops reading; the channel goes on, with more than the kernel's socket buffers hold (loopback
    // grows a send buffer past a megabyte).
    let total = 800;
    let pad = "p".repeat(3900);
    for i in 0..total {
        server
            .ok(
                &talker,
                json!({"command": "PRIVMSG", "to": "#slow", "body": format!("n{i:04} {pad}")}),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    // What reached sal's socket before the server cut it off; then the end of the connection.
    let first = s.closed().await;
    let numbers = |lines: &[String]| -> Vec<usize> {
        lines
            .iter()
            .filter(|l| command_of(l) == "PRIVMSG")
            // (A played-back line has its time in front: `[2026-12-08 09:14] n0042 ppp...`.)
            .filter_map(|l| {
                trailing(l)
                    .split(' ')
                    .find(|w| w.len() == 5 && w.starts_with('n'))
                    .and_then(|w| w[1..].parse().ok())
            })
            .collect()
    };
    let got = numbers(&first);
    assert!(
        got.len() < total,
        "cut off before all {total} were written: {}",
        got.len()
    );
    // Back again: what was not written is played back, in order.
    let mut s = Irc::connect(&server).await;
    s.register("sal", "laptop", &["PASS :a long enough password"])
        .await;
    let again = numbers(&s.sync().await);
    // The playback starts where sal last showed it had read (it answered no PING while stuck, so at most
    // where it registered) and runs to the end, in order: nothing is lost, whatever the reset dropped.
    assert!(!again.is_empty(), "{again:?}");
    assert!(
        again == (again[0]..total).collect::<Vec<_>>(),
        "the playback runs to the end, in order: {} numbers from {}",
        again.len(),
        again[0]
    );
    assert!(
        again[0] <= got.len(),
        "no gap between what sal read and the playback: {} then {}",
        got.len(),
        again[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    let server = Server::start(&[
        ("IRC_LISTEN", "127.0.0.1:0"),
        ("MAX_CONNECTIONS_PER_IP", "2"),
    ])
    .await;
    let mut a = Irc::connect(&server).await;
    a.register("cap1", "cap1", &[]).await;
    let mut b = Irc::connect(&server).await;
    b.register("cap2", "cap2", &[]).await;
    // A third from the same address is refused before anything else.
    let mut c = Irc::connect(&server).await;
    let refused = c.closed().await;
    assert_eq!(
        refused,
        vec!["ERROR :Closing link: Too many connections from your address"]
    );
    // The first two are unaffected; once one ends, its place is free again.
    assert!(a.sync().await.iter().all(|l| command_of(l) != "ERROR"));
    b.send("QUIT").await;
    b.closed().await;
    // The slot is given back once the ended connection's task is done: try until it has been.
    for _ in 0..50 {
        let mut d = Irc::connect(&server).await;
        // (A refused connection may be closed before these are written.)
        let _ = d
            .write
            .write_all(b"NICK cap3\r\nUSER cap3 0 * :cap3\r\n")
            .await;
        let first = d.next().await.unwrap_or_default();
        if first.starts_with("ERROR") {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        // Welcomed: the first line is 001.
        assert!(first.starts_with(":chatd 001 cap3 "), "{first}");
        return;
    }
    panic!("the ended connection's place was never given back");
}
