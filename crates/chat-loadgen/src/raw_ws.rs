//! A minimal client WebSocket over a plain TCP stream, built to receive many small frames cheaply: the
//! handshake is written by hand, server frames are parsed in place out of one reusable buffer (no allocation
//! per frame), and each complete data message is handed to a callback as a byte slice.
//!
//! It speaks only what the load generator needs: no extensions, no TLS, unmasked server frames, masked
//! client frames. Pings are answered with pongs; a close frame ends the connection (without a close
//! handshake: the run is over for that connection either way).

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::util::now_ns;

/// The read buffer's usual size. The kernel receive buffer is 16 KiB, so one read rarely returns more; a
/// frame larger than this grows the buffer for as long as it is pending.
pub(crate) const READ_BUFFER: usize = 16 * 1024;
/// The largest frame (or fragmented message) accepted.
pub(crate) const MAX_MESSAGE: usize = 16 << 20;
/// Free space below which the unparsed bytes are moved to the buffer's front before reading.
const MIN_READ: usize = 4096;
/// The largest HTTP answer header accepted in the handshake.
const MAX_HEADER: usize = 8192;

/// Data frames (text, binary, continuation), close, ping and pong.
const OP_CONTINUATION: u8 = 0;
/// A text frame.
pub(crate) const OP_TEXT: u8 = 1;
/// A binary frame.
pub(crate) const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// Server frames parsed out of one buffer: bytes are read into [`Frames::spare`], counted with
/// [`Frames::filled`] and taken apart by [`Frames::parse`].
#[derive(Debug)]
pub(crate) struct Frames {
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Bytes the first unparsed frame needs in all (header and payload) when it is incomplete, else 0.
    need: usize,
    /// A fragmented data message so far (rare: servers here send whole messages).
    message: Vec<u8>,
    fragmented: bool,
    /// The payload of the last ping not yet answered.
    ping: Option<Vec<u8>>,
    /// Stream mode: data payloads are handed over in pieces as they arrive (see [`Frames::streaming`]).
    stream: bool,
    /// Stream mode: payload bytes of the current data frame still to come.
    remaining: usize,
}

impl Default for Frames {
    fn default() -> Self {
        Self::new()
    }
}

impl Frames {
    pub(crate) fn new() -> Self {
        Self {
            buf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
            need: 0,
            message: Vec::new(),
            fragmented: false,
            ping: None,
            stream: false,
            remaining: 0,
        }
    }

    /// Treats data as a byte stream from now on (NATS's protocol): every data payload, of any frame size,
    /// is handed over in pieces as its bytes arrive, so no frame is ever held whole and the buffer keeps its
    /// size. Message boundaries are lost; control frames are handled as usual.
    pub(crate) fn set_streaming(&mut self) {
        self.stream = true;
    }

    /// The bytes received and not yet parsed.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Drops the first `n` buffered bytes (the handshake's answer header).
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Free space to read into, after moving pending bytes to the front or growing the buffer when the
    /// pending frame needs it.
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let want = self.need.max(READ_BUFFER);
        if self.start > 0
            && (self.buf.len() - self.end < MIN_READ || self.buf.len() - self.start < want)
        {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Counts `n` bytes just read into [`Frames::spare`].
    pub(crate) fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Returns the buffer to its usual size once a large frame has gone (READY can be large).
    pub(crate) fn shrink(&mut self) {
        if self.buf.len() > READ_BUFFER && self.end - self.start <= READ_BUFFER {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            self.buf.truncate(READ_BUFFER);
            self.buf.shrink_to_fit();
        }
        if self.message.capacity() > READ_BUFFER && !self.fragmented {
            self.message = Vec::new();
        }
    }

    /// The payload of a ping to answer, if one came.
    pub(crate) fn take_ping(&mut self) -> Option<Vec<u8>> {
        self.ping.take()
    }

    /// Parses complete frames, handing each complete data message (text or binary) to `on_data`, until
    /// `max` messages were handed over or the buffer holds no complete frame. Returns true once a close
    /// frame came (the bytes after it are ignored). Malformed frames are errors.
    pub(crate) fn parse(&mut self, max: usize, mut on_data: impl FnMut(&[u8])) -> Result<bool> {
        let mut handed = 0;
        while handed < max {
            let avail = &self.buf[self.start..self.end];
            if self.remaining > 0 {
                if avail.is_empty() {
                    break;
                }
                let n = avail.len().min(self.remaining);
                on_data(&avail[..n]);
                handed += 1;
                self.remaining -= n;
                self.start += n;
                continue;
            }
            let Some((fin, opcode, header, len)) = header(avail)? else {
                self.need = 14;
                break;
            };
            if self.stream && matches!(opcode, OP_TEXT | OP_BINARY | OP_CONTINUATION) {
                self.need = 0;
                self.start += header;
                self.remaining = len;
                continue;
            }
            let total = header + len;
            if avail.len() < total {
                self.need = total;
                break;
            }
            self.need = 0;
            let payload = &avail[header..total];
            match opcode {
                OP_TEXT | OP_BINARY => {
                    if self.fragmented {
                        bail!("a new data frame inside a fragmented message");
                    }
                    if fin {
                        on_data(payload);
                        handed += 1;
                    } else {
                        self.message.clear();
                        self.message.extend_from_slice(payload);
                        self.fragmented = true;
                    }
                }
                OP_CONTINUATION => {
                    if !self.fragmented {
                        bail!("a continuation frame outside a fragmented message");
                    }
                    if self.message.len() + payload.len() > MAX_MESSAGE {
                        bail!("fragmented message over {MAX_MESSAGE} bytes");
                    }
                    self.message.extend_from_slice(payload);
                    if fin {
                        self.fragmented = false;
                        on_data(&self.message);
                        self.message.clear();
                        handed += 1;
                    }
                }
                OP_CLOSE => {
                    self.start = self.end;
                    return Ok(true);
                }
                OP_PING => self.ping = Some(payload.to_vec()),
                OP_PONG => {}
                other => bail!("unknown opcode {other}"),
            }
            self.start += total;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(false)
    }
}

/// A server frame's header: (fin, opcode, header length, payload length), or None when incomplete.
fn header(b: &[u8]) -> Result<Option<(bool, u8, usize, usize)>> {
    let (Some(&b0), Some(&b1)) = (b.first(), b.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        bail!("reserved bits set (no extension was negotiated)");
    }
    if b1 & 0x80 != 0 {
        bail!("masked frame from the server");
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    let (header, len) = match b1 & 0x7f {
        126 => match b.get(2..4) {
            Some(l) => (4, u64::from(u16::from_be_bytes([l[0], l[1]]))),
            None => return Ok(None),
        },
        127 => match b.get(2..10).and_then(|l| <[u8; 8]>::try_from(l).ok()) {
            Some(l) => (10, u64::from_be_bytes(l)),
            None => return Ok(None),
        },
        n => (2, u64::from(n)),
    };
    if opcode >= OP_CLOSE && (!fin || len > 125) {
        bail!("control frame fragmented or over 125 bytes");
    }
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_MESSAGE {
        bail!("frame of {len} bytes (at most {MAX_MESSAGE})");
    }
    Ok(Some((fin, opcode, header, len)))
}

/// Appends one masked client frame (FIN set) to `out`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | (opcode & 0x0f));
    match payload.len() {
        n if n < 126 => out.push(0x80 | u8::try_from(n).unwrap_or(0)),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&u64::try_from(n).unwrap_or(u64::MAX).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// A cheap xorshift generator for handshake keys and frame masks (they need to vary, not to be secret).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// One client WebSocket connection.
#[derive(Debug)]
pub(crate) struct RawWs {
    stream: TcpStream,
    /// Frames received and not yet parsed.
    pub(crate) frames: Frames,
    out: Vec<u8>,
    rng: Rng,
}

impl RawWs {
    /// Connects from `source` to `server` with kernel buffers of `socket_buffer` bytes (0: the kernel's
    /// default, autotuned) and TCP_NODELAY, then upgrades `GET path` to a WebSocket; bytes after the
    /// answer's header stay buffered as frames.
    pub(crate) async fn connect(
        server: SocketAddr,
        source: SocketAddr,
        socket_buffer: u32,
        path: &str,
    ) -> Result<Self> {
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
        let source_port = stream.local_addr().map_or(0, |a| u64::from(a.port()));
        let mut ws = Self {
            stream,
            frames: Frames::new(),
            out: Vec::with_capacity(256),
            rng: Rng::new(now_ns() ^ source_port.rotate_left(32)),
        };
        ws.handshake(server, path)
            .await
            .context("websocket handshake")?;
        Ok(ws)
    }

    async fn handshake(&mut self, server: SocketAddr, path: &str) -> Result<()> {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&self.rng.next().to_le_bytes());
        key[8..].copy_from_slice(&self.rng.next().to_le_bytes());
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            STANDARD.encode(key)
        );
        self.stream.write_all(request.as_bytes()).await?;
        let header_len = loop {
            if let Some(at) = find(self.frames.buffered(), b"\r\n\r\n") {
                break at + 4;
            }
            if self.frames.buffered().len() > MAX_HEADER {
                bail!("answer header over {MAX_HEADER} bytes");
            }
            if self.read().await? == 0 {
                bail!("connection closed during the handshake");
            }
        };
        let header = &self.frames.buffered()[..header_len];
        let status = header.split(|&b| b == b'\r').next().unwrap_or_default();
        if !status.starts_with(b"HTTP/1.1 101") {
            bail!(
                "expected 101 Switching Protocols, got {:?}",
                String::from_utf8_lossy(status)
            );
        }
        self.frames.consume(header_len);
        Ok(())
    }

    /// Reads what the socket has into the frame buffer; 0 at end of stream. Cancel-safe.
    pub(crate) async fn read(&mut self) -> std::io::Result<usize> {
        let n = self.stream.read(self.frames.spare()).await?;
        self.frames.filled(n);
        Ok(n)
    }

    /// Sends one masked frame.
    pub(crate) async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        self.out.clear();
        let mask = u32::try_from(self.rng.next() >> 32)
            .unwrap_or(0)
            .to_ne_bytes();
        encode_frame(&mut self.out, opcode, payload, mask);
        self.stream.write_all(&self.out).await
    }

    /// Answers the last ping received, if any.
    pub(crate) async fn answer_ping(&mut self) -> std::io::Result<()> {
        match self.frames.take_ping() {
            Some(payload) => self.send(OP_PONG, &payload).await,
            None => Ok(()),
        }
    }

    /// The next data message as an owned buffer (for the few frames before the receive loop), or None
    /// when the server closed. Pings on the way are answered.
    pub(crate) async fn next_message(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            let mut message = None;
            let closed = self.frames.parse(1, |m| message = Some(m.to_vec()))?;
            self.answer_ping().await?;
            if closed {
                return Ok(None);
            }
            if message.is_some() {
                return Ok(message);
            }
            if self.read().await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// Where `needle` first occurs in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = hay.get(from..)?.iter().position(|&b| b == first) {
        let at = from + i;
        if hay.get(at + 1..at + needle.len())? == rest {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unmasked server frame.
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(u8::try_from(n).unwrap()),
            n if n <= 65535 => {
                out.push(126);
                out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&u64::try_from(n).unwrap().to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `stream` in pieces of the given sizes (cycled); returns the data messages, whether a close
    /// came, and the pings seen.
    fn feed(stream: &[u8], pieces: &[usize]) -> (Vec<Vec<u8>>, bool, Vec<Vec<u8>>) {
        let mut frames = Frames::new();
        let (mut messages, mut pings) = (Vec::new(), Vec::new());
        let mut at = 0;
        let mut k = 0;
        while at < stream.len() {
            let spare = frames.spare();
            let n = pieces[k % pieces.len()]
                .min(stream.len() - at)
                .min(spare.len());
            spare[..n].copy_from_slice(&stream[at..at + n]);
            frames.filled(n);
            at += n;
            k += 1;
            let closed = frames
                .parse(usize::MAX, |m| messages.push(m.to_vec()))
                .unwrap();
            pings.extend(frames.take_ping());
            if closed {
                return (messages, true, pings);
            }
        }
        (messages, false, pings)
    }

    #[test]
    fn frames_split_at_every_byte_position() {
        let mut stream = Vec::new();
        stream.extend(server_frame(true, OP_TEXT, b"hello"));
        stream.extend(server_frame(true, OP_TEXT, &[b'a'; 300]));
        stream.extend(server_frame(true, OP_PING, b"p1"));
        stream.extend(server_frame(true, OP_BINARY, b"bin"));
        for split in 1..stream.len() {
            let (messages, closed, pings) = feed(&stream, &[split, stream.len()]);
            assert_eq!(
                messages,
                vec![b"hello".to_vec(), vec![b'a'; 300], b"bin".to_vec()],
                "split at {split}"
            );
            assert!(!closed);
            assert_eq!(pings, vec![b"p1".to_vec()]);
        }
        // One byte at a time.
        let (messages, _, _) = feed(&stream, &[1]);
        assert_eq!(messages.len(), 3);
    }

    #[test]
    fn lengths_of_16_and_64_bits() {
        let medium = vec![7u8; 40_000];
        let large = vec![9u8; 70_000];
        let mut stream = server_frame(true, OP_TEXT, &medium);
        assert_eq!(stream[1], 126);
        let big = server_frame(true, OP_TEXT, &large);
        assert_eq!(big[1], 127);
        stream.extend(big);
        stream.extend(server_frame(true, OP_TEXT, b"after"));
        for pieces in [&[1000][..], &[16384], &[3, 5000, 1]] {
            let (messages, _, _) = feed(&stream, pieces);
            assert_eq!(
                messages,
                vec![medium.clone(), large.clone(), b"after".to_vec()]
            );
        }
        let mut frames = Frames::new();
        let over = (u64::try_from(MAX_MESSAGE).unwrap() + 1).to_be_bytes();
        let spare = frames.spare();
        spare[..2].copy_from_slice(&[0x81, 127]);
        spare[2..10].copy_from_slice(&over);
        frames.filled(10);
        assert!(frames.parse(usize::MAX, |_| {}).is_err());
    }

    #[test]
    fn close_ends_and_fragments_join() {
        let mut stream = server_frame(false, OP_TEXT, b"frag");
        stream.extend(server_frame(true, OP_PING, b""));
        stream.extend(server_frame(false, OP_CONTINUATION, b"men"));
        stream.extend(server_frame(true, OP_CONTINUATION, b"ted"));
        stream.extend(server_frame(true, OP_TEXT, b"whole"));
        stream.extend(server_frame(true, OP_CLOSE, &[0x03, 0xe8]));
        stream.extend(server_frame(true, OP_TEXT, b"ignored"));
        for split in 1..stream.len() {
            let (messages, closed, pings) = feed(&stream, &[split]);
            assert_eq!(
                messages,
                vec![b"fragmented".to_vec(), b"whole".to_vec()],
                "split {split}"
            );
            assert!(closed);
            assert_eq!(pings.len(), 1);
        }
        // Continuation without a start, masked server frames and reserved bits are errors.
        for bad in [
            server_frame(true, OP_CONTINUATION, b"x"),
            vec![0x81, 0x81, 1, 2, 3, 4, b'x'],
            vec![0xc1, 0x01, b'x'],
        ] {
            let mut frames = Frames::new();
            frames.spare()[..bad.len()].copy_from_slice(&bad);
            frames.filled(bad.len());
            assert!(frames.parse(usize::MAX, |_| {}).is_err());
        }
    }

    #[test]
    fn streaming_hands_over_pieces() {
        let large = vec![5u8; 50_000];
        let mut stream = server_frame(true, OP_BINARY, b"MSG a 1 2\r\n");
        stream.extend(server_frame(true, OP_PING, b"p"));
        stream.extend(server_frame(false, OP_BINARY, &large));
        stream.extend(server_frame(true, OP_CONTINUATION, b"end"));
        stream.extend(server_frame(true, OP_BINARY, b""));
        stream.extend(server_frame(true, OP_CLOSE, b""));
        let mut expected = b"MSG a 1 2\r\n".to_vec();
        expected.extend(&large);
        expected.extend(b"end");
        for pieces in [&[1][..], &[7], &[4096], &[16384], &[3, 20_000, 11]] {
            let mut frames = Frames::new();
            frames.set_streaming();
            let (mut got, mut pings, mut closed) = (Vec::<u8>::new(), 0, false);
            let mut at = 0;
            let mut k = 0;
            while at < stream.len() && !closed {
                let spare = frames.spare();
                assert!(spare.len() <= READ_BUFFER, "the buffer never grows");
                let n = pieces[k % pieces.len()]
                    .min(stream.len() - at)
                    .min(spare.len());
                spare[..n].copy_from_slice(&stream[at..at + n]);
                frames.filled(n);
                at += n;
                k += 1;
                closed = frames.parse(usize::MAX, |m| got.extend(m)).unwrap();
                pings += usize::from(frames.take_ping().is_some());
            }
            assert_eq!(got, expected, "pieces {pieces:?}");
            assert_eq!(pings, 1);
            assert!(closed);
        }
    }

    #[test]
    fn parse_stops_after_max_messages() {
        let mut stream = server_frame(true, OP_TEXT, b"one");
        stream.extend(server_frame(true, OP_TEXT, b"two"));
        let mut frames = Frames::new();
        frames.spare()[..stream.len()].copy_from_slice(&stream);
        frames.filled(stream.len());
        let mut got = Vec::new();
        assert!(!frames.parse(1, |m| got.push(m.to_vec())).unwrap());
        assert_eq!(got, vec![b"one".to_vec()]);
        assert!(!frames.parse(1, |m| got.push(m.to_vec())).unwrap());
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(frames.buffered().is_empty());
    }

    #[test]
    fn client_frames_are_masked() {
        for len in [5usize, 200, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mask = [1, 2, 3, 4];
            let mut out = Vec::new();
            encode_frame(&mut out, OP_TEXT, &payload, mask);
            assert_eq!(out[0], 0x81);
            assert_ne!(out[1] & 0x80, 0, "mask bit");
            let (header, n) = match out[1] & 0x7f {
                126 => (4, usize::from(u16::from_be_bytes([out[2], out[3]]))),
                127 => (
                    10,
                    usize::try_from(u64::from_be_bytes(out[2..10].try_into().unwrap())).unwrap(),
                ),
                n => (2, usize::from(n)),
            };
            assert_eq!(n, len);
            assert_eq!(&out[header..header + 4], &mask);
            let unmasked: Vec<u8> = out[header + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i & 3])
                .collect();
            assert_eq!(unmasked, payload);
        }
    }

    #[test]
    fn byte_search() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"abcab", b"abd"), None);
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"xx\r\n\r\nyy", b"\r\n\r\n"), Some(2));
    }
}
