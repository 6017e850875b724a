//! Attachments: multipart uploads (`payload_json` + `files[n]`) written through the engine's
//! [`chat_engine::Files`] (which owns where files live and when they go), and serving them back at
//! `/attachments/{channel}/{id}/{token}/{filename}` with safe names and headers that stop a browser from
//! rendering an upload as a page (no HTML inline, `nosniff`, a sandbox CSP).
//!
//! Without an `Authorization` header the URL itself is the capability, as Discord's CDN links are, so it must
//! not be guessable. An attachment id is a snowflake (clients read its timestamp bits), which leaves 22 random
//! bits: too few. Each upload therefore also gets a token of 128 random bits, kept in the message's
//! attachment record: a wrong token finds no file and is answered 404 like a missing one.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chat_core::ChannelId;
use chat_engine::Upload;

use super::{Auth, Form, Inner, P, readable};
use crate::error::{RestError, code};

/// At most this many files per message (Discord's limit).
const MAX_FILES: usize = 10;

pub(super) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/attachments/{channel}/{id}/{token}/{filename}", get(serve))
        .with_state(inner)
}

/// A file name safe to store and to put in a header: no directories, no control or quoting characters,
/// at most 128 bytes.
pub(crate) fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .filter(|c| {
            !c.is_control()
                && !matches!(
                    c,
                    '"' | '\'' | ';' | '<' | '>' | '%' | '?' | '#' | '*' | ':' | '|'
                )
        })
        .collect();
    let mut out = String::new();
    for c in cleaned.trim().trim_start_matches('.').chars() {
        if out.len() + c.len_utf8() > 128 {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        "file".to_owned()
    } else {
        out
    }
}

/// Whether a media type may be shown inline (never HTML, SVG, XML or scripts).
fn inline_ok(ct: &str) -> bool {
    let ct = ct.to_ascii_lowercase();
    matches!(
        ct.as_str(),
        "image/png" | "image/jpeg" | "image/gif" | "image/webp" | "text/plain"
    ) || ct.starts_with("audio/")
        || ct.starts_with("video/")
}

/// Reads a multipart message create: `payload_json` (the JSON fields) and up to ten files, each written at
/// once through the engine's upload, whose files all go again if anything fails (the upload is dropped).
pub(super) async fn read_upload(
    inner: &Inner,
    channel: ChannelId,
    req: Request,
    known: &[&str],
) -> Result<(Form, Upload), RestError> {
    let bad = |what: &str| {
        RestError::new(
            StatusCode::BAD_REQUEST,
            code::GENERAL,
            format!("400: {what}"),
        )
    };
    let mut multipart = Multipart::from_request(req, &())
        .await
        .map_err(|_| bad("Invalid multipart body"))?;
    let mut form = Form::default();
    let mut upload = inner.engine.files().upload(channel);
    while let Some(mut field) = multipart.next_field().await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            RestError::too_large(inner.settings.max_upload)
        } else {
            bad("Invalid multipart body")
        }
    })? {
        let name = field.name().unwrap_or("").to_owned();
        if name == "payload_json" {
            let text = field
                .text()
                .await
                .map_err(|_| bad("Invalid payload_json"))?;
            if text.len() > inner.settings.max_body {
                return Err(RestError::too_large(inner.settings.max_body as u64));
            }
            form = Form::parse(text.as_bytes(), known)?;
            continue;
        }
        if !name.starts_with("file") {
            // Discord ignores parts it does not know; so do we (their bytes are skipped).
            continue;
        }
        if upload.attachments().len() >= MAX_FILES {
            return Err(RestError::field(
                "files",
                "BASE_TYPE_MAX_LENGTH",
                "Must be 10 or fewer in length.",
            ));
        }
        let filename = safe_name(field.file_name().unwrap_or("file"));
        let content_type = field.content_type().map(|c| {
            c.chars()
                .filter(|c| !c.is_control())
                .take(100)
                .collect::<String>()
        });
        let mut out = upload
            .create(filename, content_type)
            .await
            .map_err(|e| internal(&e))?;
        while let Some(chunk) = field.chunk().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                RestError::too_large(inner.settings.max_upload)
            } else {
                bad("Invalid multipart body")
            }
        })? {
            if out.size() + chunk.len() as u64 > inner.settings.max_upload {
                return Err(RestError::too_large(inner.settings.max_upload));
            }
            out.write(&chunk).await.map_err(|e| internal(&e))?;
        }
        upload.finish(out).await.map_err(|e| internal(&e))?;
    }
    Ok((form, upload))
}

fn internal(e: &std::io::Error) -> RestError {
    tracing::error!(error = %e, "storing an attachment failed");
    RestError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        code::GENERAL,
        "500: The file could not be stored",
    )
}

/// `GET /attachments/{channel}/{id}/{token}/{filename}`. The token must be the attachment's (404 otherwise,
/// as for a missing file). With an `Authorization` header the caller must also be able to read the channel;
/// without one the URL itself is the capability (as Discord's CDN links are).
async fn serve(State(inner): State<Arc<Inner>>, p: P, headers: HeaderMap) -> Response {
    match serve_inner(&inner, &p, &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve_inner(
    inner: &Arc<Inner>,
    p: &P,
    headers: &HeaderMap,
) -> Result<Response, RestError> {
    let c = p.channel()?;
    let not_found = || RestError::new(StatusCode::NOT_FOUND, code::GENERAL, "404: Not Found");
    let id: u64 = p.str("id").parse().map_err(|_| not_found())?;
    let token = p.str("token");
    if !chat_engine::token_shaped(token) {
        return Err(not_found());
    }
    if headers.contains_key(header::AUTHORIZATION) {
        let mut parts = axum::http::Request::builder()
            .body(())
            .map_err(|_| RestError::unauthorized())?
            .into_parts()
            .0;
        parts.headers = headers.clone();
        let Auth(me) = <Auth as axum::extract::FromRequestParts<Arc<Inner>>>::from_request_parts(
            &mut parts, inner,
        )
        .await?;
        inner
            .query(move |core| readable(core, me.user, c).map(|_| ()))
            .await??;
    }
    let file = inner
        .engine
        .files()
        .find(c, id, token)
        .await
        .ok_or_else(not_found)?;
    let filename = safe_name(&file.filename);
    if safe_name(p.str("filename")) != filename {
        return Err(not_found());
    }
    let bytes = tokio::fs::read(&file.path).await.map_err(|_| not_found())?;
    let ct = file
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    let (ct, disposition) = if inline_ok(ct) {
        (ct.to_owned(), "inline")
    } else {
        ("application/octet-stream".to_owned(), "attachment")
    };
    let mut response = (StatusCode::OK, bytes).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&ct).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    // Only ASCII names go in the plain parameter; the full name is in filename* (RFC 6266).
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = filename
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{disposition}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("C:\\x\\a.txt"), "a.txt");
        assert_eq!(safe_name("a\u{0}b\r\n.png"), "ab.png");
        assert_eq!(safe_name(".."), "file");
        assert_eq!(safe_name("\"quoted\".txt"), "quoted.txt");
        assert!(safe_name(&"é".repeat(200)).len() <= 128);
    }

    #[test]
    fn html_is_never_inline() {
        assert!(!inline_ok("text/html"));
        assert!(!inline_ok("image/svg+xml"));
        assert!(inline_ok("image/png"));
    }
}
