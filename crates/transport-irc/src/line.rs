//! IRC lines: parsing what a client sends and writing what the server sends.
//!
//! A line is `[@tags ][:source ]COMMAND[ params...][ :trailing]`, ended by CRLF (a bare LF is accepted). The
//! limits are IRCv3's: at most [`MAX_TAGS`] bytes of tags (with the `@` and the space after them) and
//! [`MAX_BODY`] bytes for the rest, CRLF included. The parser is the server's own: the refusals a server
//! owes a client (which command lacked parameters, which line was too long) need the raw parts, not a
//! typed command that fails as a whole.

use std::fmt::Write as _;

/// The most bytes of a line after its tags, CRLF included (RFC 1459).
pub const MAX_BODY: usize = 512;
/// The most bytes of a line's tags, with the leading `@` and the space after them (IRCv3 message-tags).
pub const MAX_TAGS: usize = 8191;
/// The longest line a client may send: tags and body.
pub const MAX_LINE: usize = MAX_TAGS + MAX_BODY;
/// The most parameters a line carries (RFC 2812: 14 middles and a trailing one).
pub const MAX_PARAMS: usize = 15;

/// One line from a client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// Tags, unescaped, in order (`None` for a tag without a value).
    pub tags: Vec<(String, Option<String>)>,
    /// The source a client gave (ignored by the server).
    pub source: Option<String>,
    /// The command, upper-cased.
    pub command: String,
    /// The parameters, the trailing one last.
    pub params: Vec<String>,
}

/// Why a line was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Nothing but spaces.
    Empty,
    /// The body after the tags is longer than [`MAX_BODY`].
    BodyTooLong,
    /// The tags are longer than [`MAX_TAGS`].
    TagsTooLong,
    /// Not UTF-8.
    NotUtf8,
    /// A NUL byte, or a CR alone inside the line.
    BadCharacter,
    /// No command after the tags and source.
    NoCommand,
}

impl Message {
    /// The tag `key`'s value: `Some(None)` for a tag without one.
    pub fn tag(&self, key: &str) -> Option<Option<&str>> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_deref())
    }

    /// Parameter `i`, if present.
    pub fn param(&self, i: usize) -> Option<&str> {
        self.params.get(i).map(String::as_str)
    }
}

/// Parses one line, without its line ending (a trailing CR is dropped).
pub fn parse(raw: &[u8]) -> Result<Message, ParseError> {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    if raw.contains(&0) || raw.contains(&b'\r') {
        return Err(ParseError::BadCharacter);
    }
    let text = std::str::from_utf8(raw).map_err(|_| ParseError::NotUtf8)?;
    let mut rest = text.trim_start_matches(' ');
    if rest.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut message = Message::default();
    if let Some(tagged) = rest.strip_prefix('@') {
        let (tags, after) = tagged.split_once(' ').unwrap_or((tagged, ""));
        if tags.len() + 2 > MAX_TAGS {
            return Err(ParseError::TagsTooLong);
        }
        message.tags = tags
            .split(';')
            .filter(|t| !t.is_empty())
            .map(|t| match t.split_once('=') {
                Some((k, v)) if !v.is_empty() => (k.to_owned(), Some(unescape_tag(v))),
                Some((k, _)) => (k.to_owned(), None),
                None => (t.to_owned(), None),
            })
            .collect();
        rest = after.trim_start_matches(' ');
    }
    // The body's limit counts the CRLF the client sent.
    if rest.len() + 2 > MAX_BODY {
        return Err(ParseError::BodyTooLong);
    }
    if let Some(sourced) = rest.strip_prefix(':') {
        let (source, after) = sourced.split_once(' ').unwrap_or((sourced, ""));
        message.source = Some(source.to_owned());
        rest = after.trim_start_matches(' ');
    }
    let (command, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    if command.is_empty() {
        return Err(ParseError::NoCommand);
    }
    message.command = command.to_ascii_uppercase();
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            break;
        }
        if let Some(trailing) = rest.strip_prefix(':') {
            message.params.push(trailing.to_owned());
            break;
        }
        if message.params.len() == MAX_PARAMS - 1 {
            // The fifteenth parameter takes the rest, spaces and all (RFC 2812).
            message.params.push(rest.to_owned());
            break;
        }
        let (param, after) = rest.split_once(' ').unwrap_or((rest, ""));
        message.params.push(param.to_owned());
        rest = after;
    }
    Ok(message)
}

fn unescape_tag(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(':') => out.push(';'),
            Some('s') => out.push(' '),
            Some('\\') => out.push('\\'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

fn escape_tag(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            ';' => out.push_str("\\:"),
            ' ' => out.push_str("\\s"),
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A line the server sends, built part by part: `Line::new("PRIVMSG").source(..).arg("#a").trailing("hi")`.
#[derive(Clone, Debug, Default)]
pub struct Line {
    tags: Vec<(String, Option<String>)>,
    source: Option<String>,
    command: String,
    args: Vec<String>,
    trailing: Option<String>,
}

impl Line {
    /// A line with `command` (a word or a three-digit numeric).
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            ..Self::default()
        }
    }

    /// Sets the source (`server` or `nick!user@host`).
    #[must_use]
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Adds a tag.
    #[must_use]
    pub fn tag(mut self, key: impl Into<String>, value: Option<String>) -> Self {
        self.tags.push((key.into(), value));
        self
    }

    /// Adds tags.
    #[must_use]
    pub fn tags(mut self, tags: impl IntoIterator<Item = (String, Option<String>)>) -> Self {
        self.tags.extend(tags);
        self
    }

    /// Adds a middle parameter (must hold no space and not start with `:`; [`Line::trailing`] otherwise).
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets the last parameter, written after ` :` (so it may hold spaces or be empty).
    #[must_use]
    pub fn trailing(mut self, text: impl Into<String>) -> Self {
        self.trailing = Some(text.into());
        self
    }

    /// The first parameter (a message's target), if any.
    pub fn first_arg(&self) -> Option<&str> {
        self.args
            .first()
            .map(String::as_str)
            .or(self.trailing.as_deref())
    }

    /// The line as sent, CRLF included. Line breaks and NULs in parameters become spaces, a middle parameter
    /// that could be misread is moved to the trailing position, and a body over [`MAX_BODY`] is cut at a
    /// character boundary (callers split long texts first, see [`split_text`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(64);
        if !self.tags.is_empty() {
            out.push('@');
            for (i, (k, v)) in self.tags.iter().enumerate() {
                if i > 0 {
                    out.push(';');
                }
                out.push_str(k);
                if let Some(v) = v {
                    out.push('=');
                    escape_tag(v, &mut out);
                }
            }
            out.push(' ');
        }
        let body_start = out.len();
        if let Some(source) = &self.source {
            let _ = write!(out, ":{source} ");
        }
        out.push_str(&self.command);
        let clean = |s: &str| s.replace(['\r', '\n', '\0'], " ");
        let mut trailing = self.trailing.as_deref().map(clean);
        let last = self.args.len().saturating_sub(1);
        for (i, arg) in self.args.iter().enumerate() {
            let arg = clean(arg);
            let risky = arg.is_empty() || arg.contains(' ') || arg.starts_with(':');
            if risky && i == last && trailing.is_none() {
                trailing = Some(arg);
                break;
            }
            out.push(' ');
            // A middle parameter cannot hold a space: the rest of it would be read as another one.
            out.push_str(&arg.replace(' ', "_"));
        }
        if let Some(t) = trailing {
            out.push_str(" :");
            out.push_str(&t);
        }
        if out.len() - body_start > MAX_BODY - 2 {
            let mut cut = body_start + MAX_BODY - 2;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
        }
        out.push_str("\r\n");
        out
    }
}

/// Splits a message's text into pieces that fit a line whose other parts take `overhead` bytes: one piece
/// per line of the text (IRC has no line breaks in a message), long lines cut at character boundaries
/// (preferring a space). Empty lines are kept out; an empty text gives no pieces.
pub fn split_text(text: &str, overhead: usize) -> Vec<String> {
    let room = MAX_BODY.saturating_sub(overhead + 2).max(32);
    let mut pieces = Vec::new();
    for line in text.split('\n') {
        let mut line = line.trim_end_matches('\r');
        while line.len() > room {
            let mut cut = room;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            // Cut at the last space in the second half of the piece, if there is one.
            if let Some(space) = line[..cut].rfind(' ').filter(|s| *s > cut / 2) {
                cut = space + 1;
            }
            pieces.push(line[..cut].to_owned());
            line = &line[cut..];
        }
        if !line.is_empty() {
            pieces.push(line.to_owned());
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tags_source_command_and_params() {
        let m = parse(b"@label=a\\sb;+draft/reply=12;x :nick!u@h privmsg #chan :hello there\r")
            .unwrap();
        assert_eq!(
            m.tags,
            vec![
                ("label".into(), Some("a b".into())),
                ("+draft/reply".into(), Some("12".into())),
                ("x".into(), None)
            ]
        );
        assert_eq!(m.source.as_deref(), Some("nick!u@h"));
        assert_eq!(m.command, "PRIVMSG");
        assert_eq!(m.params, vec!["#chan", "hello there"]);
    }

    #[test]
    fn middle_and_trailing_params() {
        let m = parse(b"USER alice 0 * :Alice Liddell").unwrap();
        assert_eq!(m.params, vec!["alice", "0", "*", "Alice Liddell"]);
        let m = parse(b"JOIN   #a,#b   key").unwrap();
        assert_eq!(m.params, vec!["#a,#b", "key"]);
        let m = parse(b"PRIVMSG #a :").unwrap();
        assert_eq!(m.params, vec!["#a", ""]);
        let many = format!(
            "CMD {}",
            (1..=20)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let m = parse(many.as_bytes()).unwrap();
        assert_eq!(m.params.len(), MAX_PARAMS);
        assert_eq!(m.params[14], "15 16 17 18 19 20");
    }

    #[test]
    fn refuses_what_is_not_a_line() {
        assert_eq!(parse(b"   "), Err(ParseError::Empty));
        assert_eq!(parse(b"PRIVMSG #a :\xff\xfe"), Err(ParseError::NotUtf8));
        assert_eq!(parse(b"PRIVMSG #a :a\0b"), Err(ParseError::BadCharacter));
        assert_eq!(parse(b"@a=b"), Err(ParseError::NoCommand));
        let long = format!("PRIVMSG #a :{}", "x".repeat(600));
        assert_eq!(parse(long.as_bytes()), Err(ParseError::BodyTooLong));
        let fits = format!("PRIVMSG #a :{}", "x".repeat(510 - 12));
        assert!(parse(fits.as_bytes()).is_ok());
        let tags = format!("@a={} PING x", "v".repeat(9000));
        assert_eq!(parse(tags.as_bytes()), Err(ParseError::TagsTooLong));
    }

    #[test]
    fn encodes_with_escaped_tags_and_a_safe_trailing() {
        let line = Line::new("PRIVMSG")
            .tag("time", Some("2026-01-01T00:00:00.000Z".into()))
            .tag("+x", Some("a;b c\\".into()))
            .source("bob!1@account")
            .arg("#chan")
            .trailing("hi\r\nthere")
            .encode();
        assert_eq!(
            line,
            "@time=2026-01-01T00:00:00.000Z;+x=a\\:b\\sc\\\\ :bob!1@account PRIVMSG #chan :hi  there\r\n"
        );
        assert_eq!(Line::new("331").arg("me").arg("").encode(), "331 me :\r\n");
        assert_eq!(Line::new("X").arg(":a").encode(), "X ::a\r\n");
        let back = parse(line.trim_end().as_bytes()).unwrap();
        assert_eq!(back.tag("+x"), Some(Some("a;b c\\")));
    }

    #[test]
    fn long_lines_are_cut_at_a_character_boundary() {
        let line = Line::new("PRIVMSG")
            .arg("#a")
            .trailing("é".repeat(400))
            .encode();
        assert!(line.len() <= MAX_BODY);
        assert!(line.ends_with("\r\n"));
    }

    #[test]
    fn texts_split_into_lines_that_fit() {
        assert_eq!(split_text("a\nb\r\n\nc", 50), vec!["a", "b", "c"]);
        assert!(split_text("", 50).is_empty());
        let words = "word ".repeat(300);
        let pieces = split_text(&words, 100);
        assert!(pieces.len() > 1);
        assert!(pieces.iter().all(|p| p.len() <= MAX_BODY - 102));
        assert_eq!(pieces.concat(), words);
        let wide = "語".repeat(400);
        let pieces = split_text(&wide, 100);
        assert_eq!(pieces.concat(), wide);
    }
}
