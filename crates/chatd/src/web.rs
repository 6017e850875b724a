//! The web client: `crates/chatd/web/` embedded in the binary (read from disk in debug builds, so that an edit
//! shows on reload), served at `/` (the page) and `/static/{path}` (its modules, styles and images).
//!
//! Every answer has an ETag (the file's SHA-256), so a browser revalidates with `no-cache` and gets a 304
//! when nothing changed, and a Content-Security-Policy that allows only the page's own scripts and styles:
//! no inline script, no `eval`, nothing from other origins.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The client's files.
#[derive(rust_embed::Embed)]
#[folder = "web/"]
struct Assets;

/// The policy every web client answer carries. `connect-src 'self'` covers the same-origin WebSocket.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
                   media-src 'self' blob:; connect-src 'self'; font-src 'self'; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

/// `/` and `/static/{path}`.
pub(crate) fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/static/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    // The page is served at `/` only; `index.html` under /static would be a second copy of it.
    if path == "index.html" {
        return not_found();
    }
    serve(&path, &headers)
}

/// A missing file: the server's JSON error, as for any unknown path.
fn not_found() -> Response {
    crate::errors::error(StatusCode::NOT_FOUND, Some("No such file"), false)
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        return not_found();
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, file.data.into_owned()).into_response()
    };
    let h = response.headers_mut();
    let mime = file.metadata.mimetype();
    let content_type = if mime.starts_with("text/") || mime == "application/javascript" {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    };
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
