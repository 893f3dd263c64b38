//! The web dashboard: a single-page app (React + uPlot, built with Vite from `dashboard/`) embedded in the binary,
//! so that a node needs no Node.js at run time. It reads the JSON API (`crate::http`) with the token the user
//! gives it; it holds no data itself, so its files are served without authentication.
//!
//! `dashboard/dist` is committed: `npm ci && npm run build` in `crates/scheduler/dashboard` rebuilds it from the
//! lockfile, and the test suite checks that the committed bundle is what the sources build
//! (`scripts/test.sh`). Hashed assets (`assets/*`) are cached for good; `index.html` is always revalidated.

use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::Embed)]
#[folder = "dashboard/dist"]
struct Assets;

/// Answers `uri` with an embedded file; a path without a file extension gets `index.html` (the app routes itself
/// by URL fragment, so such paths are only mistyped ones).
pub async fn serve(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() || !path.contains('.') { "index.html" } else { path };
    let Some(file) = Assets::get(path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let cache = if path.starts_with("assets/") { "public, max-age=31536000, immutable" } else { "no-cache" };
    (
        [
            (header::CONTENT_TYPE, file.metadata.mimetype().to_string()),
            (header::CACHE_CONTROL, cache.to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
        ],
        file.data,
    )
        .into_response()
}
