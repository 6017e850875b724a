//! What identifies a linked server: its name and its base URL, as the operator gives them.

/// Why a server name or URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The name is not of the allowed form.
    #[error(
        "{0:?} is not a server name: 1 to 63 characters, lower-case letters, digits, '-' and '.', \
         starting with a letter or digit (e.g. chat.example.org)"
    )]
    Name(String),
    /// The URL is not of the allowed form.
    #[error(
        "{0:?} is not a server URL: http:// or https://, a host, no user, query or fragment \
         (e.g. https://chat.example.org)"
    )]
    Url(String),
}

/// Checks a server name: what it signs its requests with and what follows `@` in its users' nicks, so it
/// never holds `@`, spaces or upper case.
pub fn server_name(name: &str) -> Result<String, PeerError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(name.to_owned())
    } else {
        Err(PeerError::Name(name.to_owned()))
    }
}

/// Checks a server's base URL; returns it without a trailing `/`, so that paths append to it.
pub fn server_url(url: &str) -> Result<String, PeerError> {
    let bad = || PeerError::Url(url.to_owned());
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let host = rest.split('/').next().unwrap_or("");
    let clean = url.bytes().all(|b| b.is_ascii_graphic())
        && !url.contains(['?', '#', '"', '\\', '<', '>'])
        && !host.is_empty()
        && !host.contains('@');
    if clean {
        Ok(url.trim_end_matches('/').to_owned())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_case_hostnames() {
        for ok in ["a", "chat.example.org", "b-2.local", "9"] {
            assert_eq!(server_name(ok).as_deref(), Ok(ok));
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "A.example",
            "a b",
            "nick@a",
            "-a",
            ".a",
            "a/b",
            "ä",
            long.as_str(),
        ] {
            assert!(server_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_are_http_with_a_host() {
        assert_eq!(
            server_url("http://127.0.0.1:8081/").as_deref(),
            Ok("http://127.0.0.1:8081")
        );
        assert_eq!(
            server_url("https://chat.example.org/base").as_deref(),
            Ok("https://chat.example.org/base")
        );
        for bad in [
            "",
            "ftp://a",
            "http://",
            "http:///x",
            "http://u@h",
            "http://h/?q",
            "http://h/#f",
            "http://h w",
        ] {
            assert!(server_url(bad).is_err(), "{bad:?}");
        }
    }
}
