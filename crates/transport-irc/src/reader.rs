//! Reading lines from a client with a bound: a line longer than [`MAX_LINE`] is skipped to its end and
//! reported, so a client cannot make the server buffer without limit. Cancel-safe: what was read stays in
//! the reader between calls.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::line::MAX_LINE;

/// What reading gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// A line, without its LF.
    Line(Vec<u8>),
    /// A line over [`MAX_LINE`] bytes, dropped.
    TooLong,
    /// The client closed the connection.
    Closed,
}

#[derive(Debug)]
pub(crate) struct LineReader<R> {
    inner: BufReader<R>,
    line: Vec<u8>,
    skipping: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner: BufReader::with_capacity(4096, inner),
            line: Vec::new(),
            skipping: false,
        }
    }

    /// The next line.
    pub(crate) async fn next(&mut self) -> std::io::Result<Read> {
        loop {
            let chunk = self.inner.fill_buf().await?;
            if chunk.is_empty() {
                return Ok(Read::Closed);
            }
            let (taken, end) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if !self.skipping {
                let part = &chunk[..if end { taken - 1 } else { taken }];
                if self.line.len() + part.len() > MAX_LINE + 1 {
                    self.skipping = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            self.inner.consume(taken);
            if end {
                if std::mem::take(&mut self.skipping) {
                    return Ok(Read::TooLong);
                }
                return Ok(Read::Line(std::mem::take(&mut self.line)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_and_a_line_too_long() {
        let mut input = b"NICK a\r\nUSER a 0 * :A\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        input.extend_from_slice(b"\r\nPING x\r\n");
        let mut reader = LineReader::new(&input[..]);
        assert_eq!(
            reader.next().await.unwrap(),
            Read::Line(b"NICK a\r".to_vec())
        );
        assert_eq!(
            reader.next().await.unwrap(),
            Read::Line(b"USER a 0 * :A".to_vec())
        );
        assert_eq!(reader.next().await.unwrap(), Read::TooLong);
        assert_eq!(
            reader.next().await.unwrap(),
            Read::Line(b"PING x\r".to_vec())
        );
        assert_eq!(reader.next().await.unwrap(), Read::Closed);
    }
}
