//! The pure parts: send stamps, source addresses, the loopback check and histogram transport.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};

/// Source addresses 127.0.0.2 ..= 127.0.0.251: each one has its own ephemeral port range, so the total can
/// exceed the ~28k ports one address allows.
pub(crate) const SOURCE_ADDRS: usize = 250;
/// The first source address's last octet.
const SOURCE_BASE: usize = 2;

/// The size of every stamped message body, as SPEC §10's fan-out row asks (100-byte messages).
pub(crate) const BODY_LEN: usize = 100;

/// A message body stamped now: `t=<unix ns> ` padded with `x` to [`BODY_LEN`] bytes.
pub(crate) fn stamped_body() -> String {
    let mut body = format!("t={} ", now_ns());
    let len = body.len().max(BODY_LEN);
    body.extend(std::iter::repeat_n('x', len - body.len()));
    body
}

/// Now, in unix nanoseconds.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The `t=<unix ns>` stamp of a MESSAGE_CREATE frame, found by byte search (no JSON parse per frame): the
/// frame must hold `"t":"MESSAGE_CREATE"` and a `"content":"t=<digits>` followed by something else.
pub(crate) fn stamp(frame: &[u8]) -> Option<u64> {
    const TAG: &[u8] = b"\"t\":\"MESSAGE_CREATE\"";
    const CONTENT: &[u8] = b"\"content\":\"t=";
    // Anchored on their rarest bytes: `_` comes first in the tag, `=` is rare in a frame.
    find_anchored(frame, TAG, 12)?;
    let at = find_anchored(frame, CONTENT, CONTENT.len() - 1)? + CONTENT.len();
    let digits = frame.get(at..)?;
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    parse_digits(digits.get(..end)?)
}

/// A run of 1 to 19 ASCII digits as a number.
pub(crate) fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Where `needle` first occurs in `hay`, scanning eight bytes at a time for `needle[anchor]` (pick a byte
/// that is rare in the haystack) and comparing the rest around each hit.
pub(crate) fn find_anchored(hay: &[u8], needle: &[u8], anchor: usize) -> Option<usize> {
    let byte = *needle.get(anchor)?;
    let mut from = anchor;
    while let Some(at) = find_byte(hay, from, byte) {
        let start = at - anchor;
        if hay.get(start..start + needle.len())? == needle {
            return Some(start);
        }
        from = at + 1;
    }
    None
}

/// The first `byte` in `hay` at or after `from`, eight bytes at a time.
pub(crate) fn find_byte(hay: &[u8], from: usize, byte: u8) -> Option<usize> {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let pattern = LOW * u64::from(byte);
    let mut i = from;
    while let Some(chunk) = hay.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ pattern;
        // A zero byte in x is a match; the lowest flagged byte is always a true one.
        let found = x.wrapping_sub(LOW) & !x & HIGH;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    hay.get(i..)?.iter().position(|&b| b == byte).map(|p| i + p)
}

/// Every `"t=<digits>"` string in a long-poll answer (one per stamped message it carries), found by
/// substring search: chatd carries the body as `"body":"t=N"`, the bare server as `"body":{"body":"t=N"}`.
pub(crate) fn stamps(body: &[u8]) -> Vec<u64> {
    const NEEDLE: &[u8] = b"\"t=";
    let mut out = Vec::new();
    let mut i = 0;
    while i + NEEDLE.len() <= body.len() {
        if &body[i..i + NEEDLE.len()] != NEEDLE {
            i += 1;
            continue;
        }
        let start = i + NEEDLE.len();
        let end = start
            + body[start..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
        if end > start
            && matches!(body.get(end), Some(b'"' | b' '))
            && let Some(n) = std::str::from_utf8(&body[start..end])
                .ok()
                .and_then(|d| d.parse().ok())
        {
            out.push(n);
        }
        i = end.max(i + 1);
    }
    out
}

/// The top-level `"cursor":N` of a long-poll answer (the last one in the text), as a number or a string.
pub(crate) fn cursor(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let at = text.rfind("\"cursor\":")? + "\"cursor\":".len();
    let rest = text[at..].trim_start().trim_start_matches('"');
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The source address of connection `index` in process `child` of `procs`: each process gets its own
/// slice of the 250 addresses, and its connections go round that slice.
pub(crate) fn source_addr(index: usize, child: usize, procs: usize) -> Ipv4Addr {
    let procs = procs.clamp(1, SOURCE_ADDRS);
    let child = child % procs;
    let size = SOURCE_ADDRS / procs;
    let octet = SOURCE_BASE + child * size + index % size;
    Ipv4Addr::new(127, 0, 0, u8::try_from(octet).unwrap_or(u8::MAX))
}

/// The server's address from an `http://` URL, refusing anything outside 127.0.0.0/8.
pub(crate) fn loopback_target(url: &str) -> Result<SocketAddr> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("--url {url}"))?;
    if parsed.scheme() != "http" {
        bail!("--url {url}: only http:// on loopback is supported");
    }
    let ip = match parsed.host_str() {
        Some("localhost") => Ipv4Addr::LOCALHOST,
        Some(host) => host.parse::<Ipv4Addr>().map_err(|_| {
            anyhow::anyhow!("--url {url}: host {host} is not in 127.0.0.0/8 (loopback only)")
        })?,
        None => bail!("--url {url}: no host"),
    };
    if !ip.is_loopback() {
        bail!("--url {url}: host {ip} is not in 127.0.0.0/8 (loopback only)");
    }
    let port = parsed.port_or_known_default().unwrap_or(80);
    Ok(SocketAddr::new(IpAddr::V4(ip), port))
}

/// A latency histogram in microseconds, 1 µs to 10 min, 3 significant figures.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// A histogram as base64 of its V2 serialization.
pub(crate) fn encode(h: &Histogram<u64>) -> Result<String> {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| anyhow::anyhow!("serializing histogram: {e:?}"))?;
    Ok(STANDARD.encode(bytes))
}

/// The inverse of [`encode`].
pub(crate) fn decode(text: &str) -> Result<Histogram<u64>> {
    let bytes = STANDARD.decode(text).context("histogram base64")?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("deserializing histogram: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_found_without_parsing() {
        let frame =
            br#"{"op":0,"s":9,"t":"MESSAGE_CREATE","d":{"id":"1","content":"t=12345","x":1}}"#;
        assert_eq!(stamp(frame), Some(12345));
        // The tag after the content, and snake_case fields before it.
        let late = br#"{"d":{"channel_id":"1","content":"t=7"},"op":0,"t":"MESSAGE_CREATE"}"#;
        assert_eq!(stamp(late), Some(7));
        assert_eq!(stamp(br#"{"op":0,"s":9,"t":"TYPING_START","d":{}}"#), None);
        assert_eq!(
            stamp(br#"{"op":0,"t":"MESSAGE_CREATE","d":{"content":"hello"}}"#),
            None
        );
        assert_eq!(
            stamp(br#"{"op":0,"t":"MESSAGE_CREATE","d":{"content":"t=x"}}"#),
            None
        );
        assert_eq!(
            stamp(br#"{"op":0,"t":"MESSAGE_CREATE","d":{"content":"t=12"#),
            None
        );
        assert_eq!(
            stamp(br#"{"t":"MESSAGE_CREATE","d":{"content":"t=99999999999999999999"}}"#),
            None
        );
    }

    #[test]
    fn byte_search_matches_a_plain_scan() {
        let hay: Vec<u8> = (0..200u8).map(|i| b'a' + i % 23).collect();
        for byte in [b'a', b'b', b'w', b'z', 0] {
            for from in 0..hay.len() + 2 {
                let plain = hay
                    .get(from..)
                    .and_then(|h| h.iter().position(|&b| b == byte))
                    .map(|p| from + p);
                assert_eq!(find_byte(&hay, from, byte), plain, "{byte} from {from}");
            }
        }
        assert_eq!(find_anchored(b"xx_y_abc_d", b"c_d", 1), Some(7));
        assert_eq!(find_anchored(b"c_", b"c_d", 1), None);
        assert_eq!(find_anchored(b"_d", b"c_d", 1), None);
    }

    #[test]
    fn poll_answers_give_stamps_and_cursor() {
        let chatd = br#"{"messages":[{"seq":7,"body":"t=111"},{"seq":8,"body":"t=222"}],"cursor":8,"epoch":"e"}"#;
        assert_eq!(stamps(chatd), vec![111, 222]);
        assert_eq!(cursor(chatd), Some(8));
        let bare = br#"{"messages":[{"seq":3,"body":{"body":"t=5"}}],"cursor":3}"#;
        assert_eq!(stamps(bare), vec![5]);
        assert_eq!(cursor(bare), Some(3));
        let empty = br#"{"messages":[],"cursor":"12","epoch":"e","reset":true}"#;
        assert!(stamps(empty).is_empty());
        assert_eq!(cursor(empty), Some(12));
        assert!(stamps(br#"{"body":"t=12x"} "t="#).is_empty());
        // The bodies the senders make: the stamp, a space, padding.
        let body = stamped_body();
        assert_eq!(body.len(), BODY_LEN);
        let padded = format!(r#"{{"messages":[{{"seq":1,"body":"{body}"}}],"cursor":1}}"#);
        assert_eq!(stamps(padded.as_bytes()).len(), 1);
        let frame = format!(r#"{{"t":"MESSAGE_CREATE","d":{{"content":"{body}"}}}}"#);
        assert!(stamp(frame.as_bytes()).is_some());
        assert_eq!(cursor(b"{}"), None);
    }

    #[test]
    fn source_addresses_split_between_processes() {
        assert_eq!(source_addr(0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(249, 0, 1), Ipv4Addr::new(127, 0, 0, 251));
        assert_eq!(source_addr(250, 0, 1), Ipv4Addr::new(127, 0, 0, 2));
        // Two processes: 125 addresses each, disjoint.
        assert_eq!(source_addr(0, 1, 2), Ipv4Addr::new(127, 0, 0, 127));
        let first: std::collections::HashSet<_> = (0..1000).map(|i| source_addr(i, 0, 2)).collect();
        let second: std::collections::HashSet<_> =
            (0..1000).map(|i| source_addr(i, 1, 2)).collect();
        assert_eq!(first.len(), 125);
        assert!(first.is_disjoint(&second));
        assert!(
            (0..64)
                .flat_map(|c| (0..10).map(move |i| source_addr(i, c, 64)))
                .all(|a| a.octets()[3] >= 2 && a.octets()[3] <= 251)
        );
    }

    #[test]
    fn only_loopback_urls() {
        assert_eq!(
            loopback_target("http://127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            loopback_target("http://127.9.8.7").unwrap(),
            "127.9.8.7:80".parse().unwrap()
        );
        assert!(loopback_target("http://localhost:1").is_ok());
        assert!(loopback_target("http://10.0.0.1:8080").is_err());
        assert!(loopback_target("http://example.com:8080").is_err());
        assert!(loopback_target("https://127.0.0.1:8080").is_err());
        assert!(loopback_target("http://[::1]:8080").is_err());
    }

    #[test]
    fn histograms_merge_across_the_wire() {
        let mut a = histogram();
        let mut b = histogram();
        for v in 1..=1000 {
            a.record(v).unwrap();
        }
        b.record(1_000_000).unwrap();
        let mut merged = histogram();
        for h in [&a, &b] {
            merged.add(decode(&encode(h).unwrap()).unwrap()).unwrap();
        }
        assert_eq!(merged.len(), 1001);
        assert!(merged.max() >= 999_000);
        assert!((499..=501).contains(&merged.value_at_quantile(0.5)));
    }
}
