//! Search text: parsing what a user typed into terms, and the FTS5 query both stores' semantics follow.
//!
//! A query is words (all must match), `"quoted phrases"` and `prefix*` terms. Every term is reduced to its
//! alphanumeric tokens before it reaches FTS5, so nothing a user types (`"`, `AND (`, a lone `*`) can be read
//! as query syntax: the worst a hostile query does is match nothing.

/// One search term: tokens that must appear in a row, the last one possibly as a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Term {
    /// Lowercased tokens, in order.
    pub(crate) tokens: Vec<String>,
    /// Whether the last token matches as a prefix.
    pub(crate) prefix: bool,
}

/// Splits text into lowercased alphanumeric tokens, as the index's tokenizer does.
pub(crate) fn tokens(text: &str) -> Vec<String> {
    spans(text)
        .map(|(a, b)| text[a..b].to_lowercase())
        .collect()
}

/// The byte ranges of the tokens of `text` (its alphanumeric runs), in order: what [`tokens`] lowercases,
/// and what a snippet highlights.
pub(crate) fn spans(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = None;
    text.char_indices()
        .map(Some)
        .chain(std::iter::once(None))
        .filter_map(move |item| match item {
            Some((i, c)) if c.is_alphanumeric() => {
                start.get_or_insert(i);
                None
            }
            Some((i, _)) => start.take().map(|s| (s, i)),
            None => start.take().map(|s| (s, text.len())),
        })
}

/// Parses a query into terms; terms with no token in them are dropped.
pub(crate) fn parse(query: &str) -> Vec<Term> {
    let mut terms = Vec::new();
    let mut rest = query;
    while let Some(c) = rest.chars().next() {
        if c.is_whitespace() {
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let (raw, quoted) = if c == '"' {
            let inner = &rest[1..];
            match inner.find('"') {
                Some(end) => {
                    let phrase = &inner[..end];
                    rest = &inner[end + 1..];
                    (phrase, true)
                }
                None => {
                    rest = "";
                    (inner, true)
                }
            }
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"')
                .unwrap_or(rest.len());
            let word = &rest[..end];
            rest = &rest[end..];
            (word, false)
        };
        // A star right after a phrase's closing quote makes the phrase a prefix, as in FTS5.
        let mut prefix = !quoted && raw.ends_with('*');
        if quoted && rest.starts_with('*') {
            prefix = true;
            rest = rest.trim_start_matches('*');
        }
        let tokens = tokens(raw);
        if !tokens.is_empty() {
            terms.push(Term { tokens, prefix });
        }
    }
    terms
}

/// The FTS5 MATCH expression for parsed terms: each term a quoted phrase of plain tokens, all required.
pub(crate) fn fts_query(terms: &[Term]) -> String {
    let mut out = String::new();
    for (i, t) in terms.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push('"');
        // Tokens are alphanumeric only, so they never contain a quote that would need doubling.
        out.push_str(&t.tokens.join(" "));
        out.push('"');
        if t.prefix {
            out.push_str(" *");
        }
    }
    out
}

/// Whether a body matches every term (the reference semantics the in-memory store uses).
pub(crate) fn matches(body: &[String], terms: &[Term]) -> bool {
    !terms.is_empty() && terms.iter().all(|t| term_at(body, t).is_some())
}

fn term_at(body: &[String], term: &Term) -> Option<usize> {
    let n = term.tokens.len();
    if n == 0 || body.len() < n {
        return None;
    }
    (0..=body.len() - n).find(|&i| {
        term.tokens.iter().enumerate().all(|(k, tok)| {
            let b = &body[i + k];
            if term.prefix && k == n - 1 {
                b.starts_with(tok.as_str())
            } else {
                b == tok
            }
        })
    })
}

/// A highlighted excerpt: the body with each token that a term matches wrapped in `\u{2}`..`\u{3}`. The
/// markers themselves are blanked from the body first, so that no stored text can fake a highlight.
pub(crate) fn highlight(body: &str, terms: &[Term]) -> String {
    let clean: String = body
        .chars()
        .map(|c| if c == '\u{2}' || c == '\u{3}' { ' ' } else { c })
        .collect();
    let hit = |tok: &str| {
        let tok = tok.to_lowercase();
        terms.iter().any(|t| {
            t.tokens.iter().enumerate().any(|(k, q)| {
                if t.prefix && k == t.tokens.len() - 1 {
                    tok.starts_with(q.as_str())
                } else {
                    tok == *q
                }
            })
        })
    };
    let mut out = String::with_capacity(clean.len() + 8);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if !word.is_empty() {
            if hit(word) {
                out.push('\u{2}');
                out.push_str(word);
                out.push('\u{3}');
            } else {
                out.push_str(word);
            }
            word.clear();
        }
    };
    for c in clean.chars() {
        if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_becomes_plain_terms() {
        assert_eq!(
            parse("\" AND ( * OR"),
            vec![Term {
                tokens: vec!["and".into(), "or".into()],
                prefix: false
            }]
        );
        assert!(parse("\"").is_empty());
        assert!(parse("*").is_empty());
        assert_eq!(fts_query(&parse("foo* \"a b\"")), "\"foo\" * \"a b\"");
    }

    #[test]
    fn phrase_and_prefix_match() {
        let body = tokens("The quick brown fox");
        assert!(matches(&body, &parse("\"quick brown\"")));
        assert!(!matches(&body, &parse("\"brown quick\"")));
        assert!(matches(&body, &parse("qui* fox")));
        assert!(!matches(&body, &parse("qui fox")));
        assert_eq!(highlight("a fox\u{2}", &parse("fox")), "a \u{2}fox\u{3} ");
        assert_eq!(tokens("Ça va, ÉTÉ-2027!"), ["ça", "va", "été", "2027"]);
        assert_eq!(spans("ab  c").collect::<Vec<_>>(), [(0, 2), (4, 5)]);
    }
}
