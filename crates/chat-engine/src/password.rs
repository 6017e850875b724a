//! The password rule every door shares (OWASP's authentication guidance): a length range counted in Unicode
//! scalar values, any characters, no composition rules, and a refusal of the most common passwords.

use std::collections::HashSet;
use std::sync::OnceLock;

/// The shortest password accepted, in characters (Unicode scalar values).
pub const MIN_PASSWORD_CHARS: usize = 8;

/// The longest password accepted, in characters. OWASP asks for at least 64 so that passphrases fit; argon2
/// takes any length, but a cap keeps each hash cheap to compute on request.
pub const MAX_PASSWORD_CHARS: usize = 128;

/// The longest password a login checks, in bytes: more than the longest that the rule above lets anyone set
/// (128 characters of at most 4 bytes), and the bound accounts set before the rule existed had.
pub(crate) const MAX_LOGIN_PASSWORD_BYTES: usize = 1024;

/// The embedded list, most common first (see the file's header for where it comes from).
const COMMON: &str = include_str!("common-passwords.txt");

/// Why a new password is refused. The message says what the rule is, so that a door can show it as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// Fewer than [`MIN_PASSWORD_CHARS`] characters.
    #[error("must be at least {min} characters long")]
    TooShort {
        /// The shortest allowed, in characters.
        min: usize,
    },
    /// More than [`MAX_PASSWORD_CHARS`] characters.
    #[error("must be at most {max} characters long")]
    TooLong {
        /// The longest allowed, in characters.
        max: usize,
    },
    /// One of the most common passwords, which attackers try first.
    #[error("is one of the most common passwords; choose another")]
    Common,
}

fn common() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    })
}

/// Checks a new password against the rule. Nothing is trimmed or normalized: spaces count as characters,
/// as OWASP asks, so that a passphrase is taken as typed.
pub fn check_password(password: &str) -> Result<(), PasswordError> {
    // Counting stops just past the maximum, so that a megabyte of text is not walked to the end.
    let chars = password.chars().take(MAX_PASSWORD_CHARS + 1).count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort {
            min: MIN_PASSWORD_CHARS,
        });
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(PasswordError::TooLong {
            max: MAX_PASSWORD_CHARS,
        });
    }
    // The list is lowercase, and "Password1" is as guessable as "password1".
    if common().contains(password.to_lowercase().as_str()) {
        return Err(PasswordError::Common);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_counts_characters_not_bytes() {
        // Seven characters of three bytes each: 21 bytes, still too short.
        assert_eq!(
            check_password("ééééééé"),
            Err(PasswordError::TooShort { min: 8 })
        );
        assert_eq!(check_password("日本語のパスワード"), Ok(()));
        assert_eq!(
            check_password("ab"),
            Err(PasswordError::TooShort { min: 8 })
        );
        assert_eq!(check_password(""), Err(PasswordError::TooShort { min: 8 }));
        assert_eq!(check_password(&"x".repeat(128)), Ok(()));
        assert_eq!(
            check_password(&"x".repeat(129)),
            Err(PasswordError::TooLong { max: 128 })
        );
        // 128 four-byte characters are 512 bytes and still allowed.
        assert_eq!(check_password(&"𝄞".repeat(128)), Ok(()));
    }

    #[test]
    fn any_characters_are_allowed() {
        assert_eq!(check_password("correct horse"), Ok(()));
        assert_eq!(check_password("  spaces  count  "), Ok(()));
        assert_eq!(check_password("tab\tand\u{0}nul!"), Ok(()));
    }

    #[test]
    fn common_passwords_are_refused_in_any_case() {
        for p in [
            "password", "PASSWORD", "12345678", "iloveyou", "Sunshine", "trustno1",
        ] {
            assert_eq!(check_password(p), Err(PasswordError::Common), "{p}");
        }
        assert!(common().len() > 3000, "the list is embedded");
    }
}
