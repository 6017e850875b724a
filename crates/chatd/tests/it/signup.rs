//! Sign-up on every door: proof of work for guests (`HASHCASH_BITS`) and the password rule for accounts.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::Server;

fn zero_bits(stamp: &str) -> u32 {
    let hash = Sha256::digest(stamp.as_bytes());
    hash.iter()
        .position(|b| *b != 0)
        .map_or(256, |i| i as u32 * 8 + hash[i].leading_zeros())
}

/// A stamp as a client mints it: version 1, `bits`, the UTC date, the server's name, a counter that works.
fn mint(bits: u32, date: &str, resource: &str) -> String {
    (0u64..)
        .map(|c| format!("1:{bits}:{date}:{resource}::c2lnbnVw:{c:x}"))
        .find(|s| zero_bits(s) >= bits)
        .expect("a counter that works")
}

/// `YYMMDD`, `days_ago` days before now (UTC).
fn date(days_ago: u64) -> String {
    let t = std::time::SystemTime::now() - std::time::Duration::from_secs(days_ago * 86_400);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{}{}{}", &s[2..4], &s[5..7], &s[8..10])
}

fn assert_402(got: (StatusCode, Value), bits: u64, why: &str) {
    let (s, v) = got;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{v}");
    assert_eq!(v["error"], "hashcash_required", "{v}");
    assert_eq!(v["bits"], bits, "{v}");
    assert_eq!(v["resource"], "chat.test", "{v}");
    assert!(v["numeric"].is_null(), "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(message.contains(why), "{why:?} not in {message:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_pay_with_a_stamp_for_this_server_and_day() {
    let server = Server::start(&[("HASHCASH_BITS", "12"), ("SERVER_NAME", "chat.test")]).await;
    let (s, v) = server.get("/api/v1/server", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["hashcash"], json!({"bits": 12, "resource": "chat.test"}));
    let guest = |nick: &str, stamp: Option<&str>| {
        let mut body = json!({ "nick": nick });
        if let Some(stamp) = stamp {
            body["hashcash"] = json!(stamp);
        }
        server.post("/api/v1/session", None, body)
    };
    assert_402(guest("alice", None).await, 12, "required");
    let stamp = mint(12, &date(0), "chat.test");
    let (s, v) = guest("alice", Some(&stamp)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let alice = v["token"].as_str().expect("token").to_owned();
    assert_402(guest("bob", Some(&stamp)).await, 12, "already spent");
    assert_402(
        guest("bob", Some(&mint(12, &date(0), "elsewhere"))).await,
        12,
        "resource",
    );
    assert_402(
        guest("bob", Some(&mint(12, &date(2), "chat.test"))).await,
        12,
        "date",
    );
    assert_402(
        guest("bob", Some(&mint(6, &date(0), "chat.test"))).await,
        12,
        "too few",
    );
    assert_402(guest("bob", Some("1:12:x")).await, 12, "not a version 1");
    // Yesterday's stamp is still good (a sign-up just after midnight).
    let (s, v) = guest("bob", Some(&mint(12, &date(1), "chat.test"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Accounts need no stamp, on either door.
    server.register("carol", "carol's password").await;
    let (s, v) = server
        .post(
            "/api/v10/auth/register",
            None,
            json!({"username": "dora", "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = server.get("/api/v1/state", Some(&alice)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hashcash_bits_guests_need_no_stamp() {
    let server = Server::start(&[]).await;
    let (_, v) = server.get("/api/v1/server", None).await;
    assert_eq!(v["hashcash"]["bits"], 0, "{v}");
    server.guest("alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_rule_holds_on_both_doors() {
    let server = Server::start(&[]).await;
    let longpoll = |password: &str| {
        server.post(
            "/api/v1/register",
            None,
            json!({ "nick": "alice", "password": password }),
        )
    };
    // Seven characters of two bytes each are still seven characters.
    for (password, why) in [
        ("", "at least 8 characters"),
        ("2short", "at least 8 characters"),
        ("ééééééé", "at least 8 characters"),
        (&*"x".repeat(129), "at most 128 characters"),
        ("Password1", "most common"),
        ("qwertyuiop", "most common"),
    ] {
        let (s, v) = longpoll(password).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{password}: {v}");
        assert_eq!(v["error"], "invalid_input", "{v}");
        assert!(v["numeric"].is_null(), "{v}");
        let message = v["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("Invalid password: ") && message.contains(why),
            "{message}"
        );
    }
    let discord = |password: &str| {
        server.post(
            "/api/v10/auth/register",
            None,
            json!({ "username": "bob", "password": password }),
        )
    };
    for (password, kind) in [
        ("2short", "BASE_TYPE_BAD_LENGTH"),
        ("iloveyou", "PASSWORD_TOO_WEAK"),
    ] {
        let (s, v) = discord(password).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["code"], 50035, "{v}");
        assert_eq!(v["errors"]["password"]["_errors"][0]["code"], kind, "{v}");
    }
    // Refusals changed nothing: both nicks are still free, and any eight characters will do.
    server.register("alice", "ééééééé!").await;
    let (s, v) = discord("        ").await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// The IRC door asks guests for the same proof of work: `PASS hashcash:<stamp>`; without one, a NOTICE names
/// the bits and resource and the connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_guests_pay_with_a_stamp_in_pass() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let server = Server::start(&[
        ("HASHCASH_BITS", "12"),
        ("SERVER_NAME", "chat.test"),
        ("IRC_LISTEN", "127.0.0.1:0"),
    ])
    .await;
    let addr = server.irc.expect("the IRC door");
    async fn talk(addr: std::net::SocketAddr, lines: &str, until: &str) -> Vec<String> {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (read, mut write) = stream.into_split();
        write.write_all(lines.as_bytes()).await.unwrap();
        let mut read = BufReader::new(read).lines();
        let mut seen = Vec::new();
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(std::time::Duration::from_secs(10), read.next_line()).await
        {
            let done = line.contains(until);
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    }
    let refused = talk(addr, "NICK carl\r\nUSER carl 0 * :c\r\n", "ERROR").await;
    assert!(
        refused
            .iter()
            .any(|l| l.contains("NOTICE") && l.contains("12 bits") && l.contains("chat.test")),
        "{refused:#?}"
    );
    assert!(
        refused.iter().any(|l| l.starts_with("ERROR")),
        "{refused:#?}"
    );
    assert!(!refused.iter().any(|l| l.contains(" 001 ")), "{refused:#?}");
    let stamp = mint(12, &date(0), "chat.test");
    let welcomed = talk(
        addr,
        &format!("PASS hashcash:{stamp}\r\nNICK carl\r\nUSER carl 0 * :c\r\n"),
        " 001 ",
    )
    .await;
    assert!(
        welcomed.iter().any(|l| l.starts_with(":chatd 001 carl ")),
        "{welcomed:#?}"
    );
    // The stamp is spent.
    let again = talk(
        addr,
        &format!("PASS hashcash:{stamp}\r\nNICK carla\r\nUSER carla 0 * :c\r\n"),
        "ERROR",
    )
    .await;
    assert!(!again.iter().any(|l| l.contains(" 001 ")), "{again:#?}");
}
