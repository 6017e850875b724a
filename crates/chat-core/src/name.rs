//! Names: nick and channel-name rules, ASCII casemapping, and length limits on free text.

use crate::error::{Error, Field};

/// The longest nick, in characters (all nick characters are ASCII, so also bytes).
pub const NICK_MAX: usize = 32;
/// The longest network channel name after the `#`, in characters.
pub const CHANNEL_NAME_MAX: usize = 63;

/// Folds a name for case-insensitive comparison with IRC's `ascii` casemapping: only `A-Z` fold to `a-z`.
///
/// Non-ASCII characters are kept as they are, so two names that merely look alike (Latin `a` and Cyrillic
/// `а`) stay different names.
pub fn casefold(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn is_nick_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '_' | '-' | '[' | ']' | '\\' | '^' | '{' | '}' | '|' | '`'
        )
}

/// Checks a nick: 1..=32 of `A-Z a-z 0-9 _ - [ ] \ ^ { } | \``, not starting with a digit or `-`.
pub fn validate_nick(nick: &str) -> Result<(), Error> {
    let bad = |reason| Err(Error::ErroneousNick { reason });
    if nick.is_empty() {
        return bad("empty");
    }
    if nick.len() > NICK_MAX {
        return bad("longer than 32 characters");
    }
    let first = nick.chars().next().unwrap_or('0');
    if first.is_ascii_digit() || first == '-' {
        return bad("starts with a digit or '-'");
    }
    if !nick.chars().all(is_nick_char) {
        return bad("contains a character outside A-Z a-z 0-9 _ - [ ] \\ ^ { } | `");
    }
    Ok(())
}

/// Checks a network channel name: `#` then 1..=63 characters with no space, comma, colon or control character.
pub fn validate_channel_name(name: &str) -> Result<(), Error> {
    let bad = |reason| Err(Error::BadChannelName { reason });
    let Some(rest) = name.strip_prefix('#') else {
        return bad("does not start with '#'");
    };
    let count = rest.chars().count();
    if count == 0 {
        return bad("empty after '#'");
    }
    if count > CHANNEL_NAME_MAX {
        return bad("longer than 63 characters after '#'");
    }
    if rest
        .chars()
        .any(|c| c == ' ' || c == ',' || c == ':' || c.is_control())
    {
        return bad("contains a space, comma, colon or control character");
    }
    Ok(())
}

/// Checks free text against a length limit in bytes and rejects control characters other than newline and tab
/// when `single_line` is false, or all control characters when it is true.
pub(crate) fn check_text(
    field: Field,
    text: &str,
    max_bytes: usize,
    single_line: bool,
) -> Result<(), Error> {
    if text.len() > max_bytes {
        return Err(Error::InvalidInput {
            field,
            reason: "too long",
        });
    }
    let bad_control = |c: char| c.is_control() && (single_line || !matches!(c, '\n' | '\t' | '\r'));
    if text.chars().any(bad_control) {
        return Err(Error::InvalidInput {
            field,
            reason: "contains a control character",
        });
    }
    Ok(())
}

/// Checks a display name (space, role, channel in a space, user display name): non-empty after trimming,
/// at most `max` characters, one line.
pub(crate) fn check_label(field: Field, text: &str, max_chars: usize) -> Result<(), Error> {
    if text.trim().is_empty() {
        return Err(Error::InvalidInput {
            field,
            reason: "empty",
        });
    }
    if text.chars().count() > max_chars {
        return Err(Error::InvalidInput {
            field,
            reason: "too long",
        });
    }
    check_text(field, text, max_chars * 4, true)
}

/// Matches an IRC-style ban mask against a nick: `*` matches any run, `?` one character, case-insensitively.
///
/// A full `nick!user@host` mask is accepted and matched on its nick part, since chatd users have no user or
/// host part that others may see.
pub fn mask_matches(mask: &str, nick: &str) -> bool {
    let mask = mask.split('!').next().unwrap_or(mask);
    let mask: Vec<u8> = mask.bytes().map(|b| b.to_ascii_lowercase()).collect();
    let nick: Vec<u8> = nick.bytes().map(|b| b.to_ascii_lowercase()).collect();
    // Iterative glob with single backtrack point: linear in practice, no recursion on hostile masks.
    let (mut m, mut n) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while n < nick.len() {
        if m < mask.len() && (mask[m] == b'?' || mask[m] == nick[n]) {
            m += 1;
            n += 1;
        } else if m < mask.len() && mask[m] == b'*' {
            star = Some(m);
            mark = n;
            m += 1;
        } else if let Some(s) = star {
            m = s + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    while m < mask.len() && mask[m] == b'*' {
        m += 1;
    }
    m == mask.len()
}

/// Checks a ban mask: 1..=100 bytes, no space, comma or control character.
pub(crate) fn validate_mask(mask: &str) -> Result<(), Error> {
    if mask.is_empty()
        || mask.len() > 100
        || mask.chars().any(|c| c == ' ' || c == ',' || c.is_control())
    {
        return Err(Error::InvalidInput {
            field: Field::Mask,
            reason: "not a valid ban mask",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicks() {
        for ok in [
            "a",
            "Alice",
            "[x]",
            "a-b",
            "_",
            "`",
            "x|y^z{}\\",
            &"n".repeat(32),
        ] {
            assert!(validate_nick(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "-a",
            "a b",
            "é",
            "a.b",
            "a!b",
            "a@b",
            "#a",
            &"n".repeat(33),
        ] {
            assert!(validate_nick(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn channel_names() {
        for ok in [
            "#a",
            "#rust-lang",
            "#日本語",
            &format!("#{}", "c".repeat(63)),
        ] {
            assert!(validate_channel_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "#",
            "a",
            "# a",
            "#a,b",
            "#a:b",
            "#a\u{7}",
            &format!("#{}", "c".repeat(64)),
        ] {
            assert!(validate_channel_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ascii_casemapping_only() {
        assert_eq!(casefold("AbC[]"), "abc[]");
        assert_ne!(
            casefold("\u{430}lice"),
            casefold("alice"),
            "Cyrillic a is not Latin a"
        );
    }

    #[test]
    fn masks() {
        assert!(mask_matches("*", "bob"));
        assert!(mask_matches("b?b", "BOB"));
        assert!(mask_matches("bo*", "bobby"));
        assert!(mask_matches("bob!*@*", "bob"));
        assert!(!mask_matches("bob", "bobby"));
        assert!(!mask_matches("*x", "bob"));
        assert!(mask_matches("*a*b*c*", "xxaxxbxxc"));
    }
}
