//! The web client's files as the binary serves them: types, caching and the security headers, checked over
//! HTTP without a browser (the browser tests are in `web.rs`).

use reqwest::StatusCode;
use reqwest::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
    X_CONTENT_TYPE_OPTIONS,
};

use crate::harness::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_files_come_with_types_etags_and_a_strict_policy() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let get = |path: &str| http.get(format!("{}{path}", server.base)).send();

    let page = get("/").await.expect("GET /");
    assert_eq!(page.status(), StatusCode::OK);
    let h = page.headers().clone();
    assert_eq!(h[CONTENT_TYPE], "text/html; charset=utf-8");
    let csp = h[CONTENT_SECURITY_POLICY].to_str().expect("ascii");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(h[CACHE_CONTROL], "no-cache");
    let html = page.text().await.expect("body");
    assert!(
        html.contains("<script type=\"module\" src=\"/static/"),
        "{html}"
    );
    assert!(!html.contains("<script>"), "no inline script");

    // A revalidation with the ETag is a 304 without a body; another tag gets the page again.
    let etag = h[ETAG].to_str().expect("ascii").to_owned();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    let again = http
        .get(format!("{}/", server.base))
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("revalidate");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(again.bytes().await.expect("body").is_empty());
    let stale = http
        .get(format!("{}/", server.base))
        .header(IF_NONE_MATCH, "\"0000\"")
        .send()
        .await
        .expect("stale");
    assert_eq!(stale.status(), StatusCode::OK);

    for (path, want) in [
        ("/static/main.js", "text/javascript; charset=utf-8"),
        ("/static/app.css", "text/css; charset=utf-8"),
    ] {
        let r = get(path).await.expect("asset");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()[CONTENT_TYPE], want, "{path}");
        assert!(r.headers().contains_key(ETAG), "{path}");
    }
    for path in [
        "/static/nope.js",
        "/static/../Cargo.toml",
        "/static/%2e%2e/src/web.rs",
        "/static/index.html",
    ] {
        let r = get(path).await.expect("missing");
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
}
