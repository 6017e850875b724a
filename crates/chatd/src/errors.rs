//! One error shape for everything the server answers: `{"error": name, "message": text, "numeric": null}`
//! (the long-poll API's), or Discord's `{"code": 0, "message": "404: Not Found"}` under `/api/v9` and
//! `/api/v10`.
//!
//! The transports write their own errors in their shapes. What is left is written by the HTTP stack: axum's
//! 405 for a known path with another method (empty body), an extractor's rejection (plain text, such as a
//! WebSocket upgrade without `Upgrade`), a bare status. [`to_json`] rewrites those after the router has
//! answered, keeping status and headers (`Allow`, `Retry-After`). [`check_head`] refuses request heads that
//! hyper accepts but that no route needs (URLs over [`MAX_URI_BYTES`], headers over [`MAX_HEADER_BYTES`]),
//! before any route sees them. hyper's own refusals, written before any service runs, are rewritten at
//! the connection (`conn.rs`).

use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The longest request target (path and query) a route is asked to read. nginx's default buffer for a
/// request line is the same 8 KiB; no route of ours needs a tenth of it.
pub(crate) const MAX_URI_BYTES: usize = 8 * 1024;

/// The most header bytes (names, values and separators) a request may carry: four times nginx's 8 KiB line
/// buffer, room for any token or cookie we issue.
pub(crate) const MAX_HEADER_BYTES: usize = 32 * 1024;

/// How much of a plain-text error body is kept as the JSON `message`: rejections are one short sentence.
const MAX_TEXT: usize = 1024;

/// The snake_case name and the default sentence for an error status.
pub(crate) fn describe(status: StatusCode) -> (&'static str, &'static str) {
    match status.as_u16() {
        400 => ("bad_request", "Malformed request"),
        401 => ("unauthorized", "Authentication needed"),
        403 => ("forbidden", "Not allowed"),
        404 => ("not_found", "No such route"),
        405 => ("method_not_allowed", "This route does not take that method"),
        408 => ("request_timeout", "The request took too long"),
        411 => ("length_required", "A Content-Length is needed"),
        413 => ("body_too_large", "The request body is too large"),
        414 => ("uri_too_long", "The request URL is too long"),
        415 => ("unsupported_media_type", "Unsupported content type"),
        429 => ("rate_limited", "Too many requests"),
        431 => ("headers_too_large", "The request headers are too large"),
        503 => ("unavailable", "The server is unavailable"),
        _ if status.is_server_error() => ("internal", "Internal error"),
        _ => ("error", "The request was refused"),
    }
}

/// Whether `path` belongs to the Discord-compatible REST API, whose errors keep Discord's shape.
pub(crate) fn is_discord(path: &str) -> bool {
    ["/api/v10", "/api/v9"].iter().any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// An error answer in the shape for `path`'s API, with `message` (or the status's default sentence).
pub(crate) fn error(status: StatusCode, message: Option<&str>, discord: bool) -> Response {
    let (name, default) = describe(status);
    let body = if discord {
        // Discord's generic HTTP errors: code 0 and the status in the message.
        json!({
            "code": 0,
            "message": format!(
                "{}: {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or(default)
            ),
        })
    } else {
        json!({
            "error": name,
            "message": message.unwrap_or(default),
            "numeric": null,
        })
    };
    (status, axum::Json(body)).into_response()
}

/// Refuses a head over our limits: 414 for a long URL, 431 for large headers.
pub(crate) fn check_head<B>(request: &Request<B>) -> Option<Response> {
    let discord = is_discord(request.uri().path());
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return Some(error(
            StatusCode::URI_TOO_LONG,
            Some("The request URL is longer than 8 KiB"),
            discord,
        ));
    }
    // As on the wire: `name: value\r\n`.
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Some(error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Some("The request headers are larger than 32 KiB"),
            discord,
        ));
    }
    None
}

/// Gives an error answer that is not JSON (empty, or plain text) the JSON shape, keeping its status, its
/// headers and, as the message, its text. Successes, and errors already in JSON, pass untouched.
pub(crate) async fn to_json(response: Response, discord: bool) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // A body too long or unreadable is dropped for the status's own sentence.
    let text = axum::body::to_bytes(body, MAX_TEXT)
        .await
        .ok()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    let json = error(status, text.as_deref(), discord);
    let (json_parts, json_body) = json.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        json_parts
            .headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("application/json")),
    );
    Response::from_parts(parts, json_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn plain_errors_become_json_and_keep_their_headers() {
        let plain = (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET,HEAD")],
        )
            .into_response();
        let mapped = to_json(plain, false).await;
        assert_eq!(mapped.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(mapped.headers()[header::ALLOW], "GET,HEAD");
        assert_eq!(mapped.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body(mapped).await,
            json!({"error": "method_not_allowed", "message": "This route does not take that method", "numeric": null})
        );

        let text = (
            StatusCode::BAD_REQUEST,
            "Connection header did not include 'upgrade'",
        )
            .into_response();
        assert_eq!(
            body(to_json(text, false).await).await,
            json!({"error": "bad_request", "message": "Connection header did not include 'upgrade'", "numeric": null})
        );

        let discord = to_json(StatusCode::METHOD_NOT_ALLOWED.into_response(), true).await;
        assert_eq!(
            body(discord).await,
            json!({"code": 0, "message": "405: Method Not Allowed"})
        );
    }

    #[tokio::test]
    async fn successes_and_json_errors_pass_untouched() {
        let ok = (StatusCode::OK, "hello").into_response();
        let ok = to_json(ok, false).await;
        assert_eq!(
            axum::body::to_bytes(ok.into_body(), 100)
                .await
                .expect("body"),
            "hello"
        );
        let own = (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"code": 10003, "message": "Unknown Channel"})),
        )
            .into_response();
        assert_eq!(
            body(to_json(own, false).await).await,
            json!({"code": 10003, "message": "Unknown Channel"})
        );
    }

    #[test]
    fn discord_paths() {
        assert!(is_discord("/api/v10/users/@me"));
        assert!(is_discord("/api/v9"));
        assert!(!is_discord("/api/v1/messages"));
        assert!(!is_discord("/api/v100/x"));
        assert!(!is_discord("/gateway"));
    }

    #[test]
    fn heads_over_the_limits_are_refused() {
        let long = Request::get(format!("/?q={}", "a".repeat(MAX_URI_BYTES)))
            .body(())
            .expect("request");
        assert_eq!(
            check_head(&long).map(|r| r.status()),
            Some(StatusCode::URI_TOO_LONG)
        );
        let big = Request::get("/")
            .header("x-big", "a".repeat(MAX_HEADER_BYTES))
            .body(())
            .expect("request");
        assert_eq!(
            check_head(&big).map(|r| r.status()),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let fine = Request::get("/api/v1/server")
            .header("authorization", "Bearer x")
            .body(())
            .expect("request");
        assert!(check_head(&fine).is_none());
    }
}
