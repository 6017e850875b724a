//! Names: nick and channel-name rules, ASCII casemapping, and length limits on free text.

use crate::error::{Error, Field};
use crate::model::User;

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

/// Matches an IRC-style glob against a name: `*` matches any run, `?` one character, case-insensitively.
///
/// This is the nick part of a ban mask; [`ban_matches`] matches a whole mask against a user.
pub fn mask_matches(mask: &str, nick: &str) -> bool {
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

/// The prefix of an extended ban by account (IRCv3 networks' `$a:name`).
const ACCOUNT_BAN: &str = "$a:";

/// What kind of user a mask's host part names: chatd shows no addresses, so the host says what the user is.
pub fn user_host(user: &User) -> &'static str {
    if user.system {
        "server"
    } else if user.bot {
        "bot"
    } else if user.is_guest() {
        "guest"
    } else {
        "account"
    }
}

/// Whether a ban mask matches a user as they are now (their nick, id and kind).
///
/// A user's IRC prefix is `nick!id@host`: the nick they have now, their user id (a snowflake, which never
/// changes), and [`user_host`] (`account`, `guest`, `bot` or `server`) in place of an address. A mask without
/// `!` or `@` is a nick (`bob*` is `bob*!*@*`); missing parts of a full mask are `*`, and each part is a glob
/// ([`mask_matches`]). `$a:name` matches the account (or bot) whose nick is `name`, never a guest.
///
/// What a ban holds beyond its mask (the users it bound, whatever their nick now) is [`crate::Ban::holds`].
pub fn ban_matches(mask: &str, user: &User) -> bool {
    if let Some(name) = mask.strip_prefix(ACCOUNT_BAN) {
        return !user.is_guest() && !user.system && user.nick.eq_ignore_ascii_case(name);
    }
    let (nick, rest) = match mask.split_once('!') {
        Some((nick, rest)) => (nick, Some(rest)),
        None if mask.contains('@') => ("*", Some(mask)),
        None => (mask, None),
    };
    let (ident, host) = match rest {
        None => ("*", "*"),
        Some(rest) => rest.split_once('@').unwrap_or((rest, "*")),
    };
    mask_matches(nick, &user.nick)
        && mask_matches(ident, &user.id.get().to_string())
        && mask_matches(host, user_host(user))
}

/// The one nick a mask can match, if its nick part has no wildcard (`$a:name` included): the user it would
/// bind is then found by name instead of by a scan.
pub(crate) fn mask_exact_nick(mask: &str) -> Option<&str> {
    let nick = match mask.strip_prefix(ACCOUNT_BAN) {
        Some(name) => name,
        None if !mask.contains('!') && mask.contains('@') => return None,
        None => mask.split('!').next().unwrap_or(mask),
    };
    (!nick.is_empty() && !nick.contains(['*', '?'])).then_some(nick)
}

/// Checks a ban mask: 1..=100 bytes, no space, comma or control character; of the extended bans only
/// `$a:name` (by account), with a valid nick as the name.
pub(crate) fn validate_mask(mask: &str) -> Result<(), Error> {
    if mask.starts_with('$') {
        let valid = mask
            .strip_prefix(ACCOUNT_BAN)
            .is_some_and(|name| validate_nick(name).is_ok());
        if !valid {
            return Err(Error::InvalidInput {
                field: Field::Mask,
                reason: "not a valid ban mask: the only extended ban is $a:account",
            });
        }
    }
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
        assert!(!mask_matches("bob", "bobby"));
        assert!(!mask_matches("*x", "bob"));
        assert!(mask_matches("*a*b*c*", "xxaxxbxxc"));
    }

    fn user(nick: &str, id: u64, account: bool) -> User {
        User {
            password_hash: account.then(|| "$argon2id$x".into()),
            ..User::new(
                crate::id::UserId::from_raw(id).expect("nonzero"),
                nick.into(),
                0,
            )
        }
    }

    #[test]
    fn full_masks() {
        let mal = user("mal", 42, true);
        let guest = user("mal", 43, false);
        assert!(ban_matches("MAL", &mal));
        assert!(ban_matches("mal!*@*", &mal));
        assert!(ban_matches("m*!42@account", &mal));
        assert!(!ban_matches("mal!*@guest", &mal));
        assert!(ban_matches("mal!*@guest", &guest));
        assert!(ban_matches("*!*@guest", &guest));
        assert!(ban_matches("*@guest", &guest));
        assert!(ban_matches("*!43", &guest));
        assert!(!ban_matches("*!42", &guest));
        // An address is never a user's host, so a ban by address matches nobody instead of everybody.
        assert!(!ban_matches("*!*@192.0.2.1", &mal));
        assert!(ban_matches("$a:Mal", &mal));
        assert!(!ban_matches("$a:mal", &guest));
        assert!(!ban_matches("$a:mallory", &mal));
    }

    #[test]
    fn extended_bans() {
        assert!(validate_mask("$a:mal").is_ok());
        for bad in ["$a:", "$a", "$a:1x", "$r:x", "$x"] {
            assert!(validate_mask(bad).is_err(), "{bad}");
        }
        assert_eq!(mask_exact_nick("$a:mal"), Some("mal"));
        assert_eq!(mask_exact_nick("mal!*@*"), Some("mal"));
        assert_eq!(mask_exact_nick("ma*"), None);
        assert_eq!(mask_exact_nick("*@guest"), None);
    }
}
