//! Full-text search on PostgreSQL with the same tokens as SQLite's index: the store makes each body's
//! `tsvector` and each query's `tsquery` itself, from `text.rs`'s tokens.
//!
//! PostgreSQL's own parser (`to_tsvector('simple', ...)`) does not split text as SQLite's `unicode61`
//! tokenizer does: it keeps host names, e-mail addresses, file paths and decimals whole (`a.b.com` is one
//! token, and `b` alone does not find it), and it cannot remove diacritics without the `unaccent` extension,
//! which a managed database may not offer. So the store tokenizes in Rust, exactly as the other stores do
//! (alphanumeric runs, lowercased), removes diacritics from precomposed letters as `remove_diacritics` does
//! (`é` → `e`), and hands PostgreSQL the finished lexemes with their positions. PostgreSQL then only indexes
//! (GIN) and matches (`@@`, `<->` for phrases, `:*` for prefixes): the same messages are found.
//!
//! Nothing a user typed reaches PostgreSQL as query syntax: every lexeme is made of alphanumeric characters
//! only and is quoted besides.

use unicode_normalization::char::{decompose_canonical, is_combining_mark};

use crate::text::{self, Term};

/// The longest lexeme PostgreSQL accepts is 2047 bytes. A longer token is left out of the index (a word of
/// 2 KB is not what anyone searches for), and a query with one finds nothing.
const MAX_LEXEME: usize = 2046;

/// PostgreSQL keeps positions up to 16383; later tokens share the last one (phrases there may match loosely).
const MAX_POSITION: usize = 16_383;

/// Tokens of an excerpt, as SQLite's `snippet(..., 24)`.
const SNIPPET_TOKENS: usize = 24;

/// Removes the diacritics of precomposed letters (`é` → `e`, `Å` → `A`), as SQLite's `remove_diacritics`:
/// a letter that does not decompose (or a mark that is itself part of a word's spelling) is kept.
pub(crate) fn fold(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    for c in token.chars() {
        let mut parts = Vec::new();
        decompose_canonical(c, |d| parts.push(d));
        // Only a decomposition into a letter and its marks is folded: a Hangul syllable decomposes into
        // jamo, which are letters, and stays whole.
        if parts.len() > 1 && parts.iter().any(|d| is_combining_mark(*d)) {
            out.extend(parts.into_iter().filter(|d| !is_combining_mark(*d)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Quotes a lexeme for tsvector/tsquery input. Tokens are alphanumeric, so the escapes never apply; they
/// are there so that a change to the tokenizer could not open an injection.
fn quote(lexeme: &str, out: &mut String) {
    out.push('\'');
    for c in lexeme.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
}

/// The `tsvector` input of a body: each folded token with its position (1-based).
pub(crate) fn tsvector(body: &str) -> String {
    let mut out = String::new();
    for (i, tok) in text::tokens(body).iter().enumerate() {
        let tok = fold(tok);
        if tok.is_empty() || tok.len() > MAX_LEXEME {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        quote(&tok, &mut out);
        out.push(':');
        out.push_str(&(i + 1).min(MAX_POSITION).to_string());
    }
    out
}

/// Folds parsed terms the way bodies are folded.
pub(crate) fn fold_terms(terms: &[Term]) -> Vec<Term> {
    terms
        .iter()
        .map(|t| Term {
            tokens: t.tokens.iter().map(|k| fold(k)).collect(),
            prefix: t.prefix,
        })
        .collect()
}

/// The `tsquery` input of folded terms: each term a phrase (`<->`), its last token a prefix (`:*`) if asked,
/// all terms required (`&`). `None` when no message can match (a token too long to be indexed).
pub(crate) fn tsquery(terms: &[Term]) -> Option<String> {
    let mut out = String::new();
    for (i, t) in terms.iter().enumerate() {
        if i > 0 {
            out.push_str(" & ");
        }
        out.push('(');
        for (k, tok) in t.tokens.iter().enumerate() {
            if tok.is_empty() || tok.len() > MAX_LEXEME {
                return None;
            }
            if k > 0 {
                out.push_str(" <-> ");
            }
            quote(tok, &mut out);
            if t.prefix && k == t.tokens.len() - 1 {
                out.push_str(":*");
            }
        }
        out.push(')');
    }
    (!out.is_empty()).then_some(out)
}

/// An excerpt of `body` of at most 24 tokens around the first match, each matching token between `\u{2}` and
/// `\u{3}`, with `…` where text was cut (SQLite's `snippet(messages_fts, 0, char(2), char(3), '…', 24)`). The
/// markers are blanked from the body first, so that no stored text can fake a highlight.
pub(crate) fn snippet(body: &str, terms: &[Term]) -> String {
    let clean: String = body
        .chars()
        .map(|c| if c == '\u{2}' || c == '\u{3}' { ' ' } else { c })
        .collect();
    let spans: Vec<(usize, usize)> = text::spans(&clean).collect();
    let hit = |(a, b): (usize, usize)| {
        let tok = fold(&clean[a..b].to_lowercase());
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
    let hits: Vec<bool> = spans.iter().map(|s| hit(*s)).collect();
    let (from, to) = if spans.len() <= SNIPPET_TOKENS {
        (0, spans.len())
    } else {
        // A little context before the first match, as much as fits after it.
        let first = hits.iter().position(|h| *h).unwrap_or(0);
        let from = first.saturating_sub(3).min(spans.len() - SNIPPET_TOKENS);
        (from, from + SNIPPET_TOKENS)
    };
    let start = if from == 0 { 0 } else { spans[from].0 };
    let end = if to == spans.len() {
        clean.len()
    } else {
        spans[to - 1].1
    };
    let mut out = String::with_capacity(end - start + 16);
    if start > 0 {
        out.push('…');
    }
    let mut at = start;
    for (i, &(a, b)) in spans.iter().enumerate().take(to).skip(from) {
        out.push_str(&clean[at..a]);
        if hits[i] {
            out.push('\u{2}');
            out.push_str(&clean[a..b]);
            out.push('\u{3}');
        } else {
            out.push_str(&clean[a..b]);
        }
        at = b;
    }
    out.push_str(&clean[at..end]);
    if end < clean.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexemes_are_folded_and_quoted() {
        assert_eq!(fold("café"), "cafe");
        assert_eq!(fold("ÅNGSTRÖM"), "ANGSTROM");
        assert_eq!(
            tsvector("Café au lait, café!"),
            "'cafe':1 'au':2 'lait':3 'cafe':4"
        );
        let terms = fold_terms(&text::parse("\"crème brûlée\" tart*"));
        assert_eq!(
            tsquery(&terms).as_deref(),
            Some("('creme' <-> 'brulee') & ('tart':*)")
        );
        assert_eq!(tsquery(&fold_terms(&text::parse(&"x".repeat(3000)))), None);
        assert_eq!(tsvector(&"y".repeat(3000)), "");
    }

    #[test]
    fn snippets_mark_matches_and_cut_long_bodies() {
        let terms = fold_terms(&text::parse("cafe"));
        assert_eq!(snippet("un Café\u{2}", &terms), "un \u{2}Café\u{3} ");
        let long: Vec<String> = (0..60).map(|i| format!("w{i}")).collect();
        let body = long.join(" ");
        let s = snippet(&body, &fold_terms(&text::parse("w30")));
        assert!(s.starts_with("…w27 "), "{s}");
        assert!(s.contains("\u{2}w30\u{3}"), "{s}");
        assert!(s.ends_with("w50…"), "{s}");
    }
}
