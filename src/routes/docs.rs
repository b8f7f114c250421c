//! The interactive `/docs` page: Swagger UI served from the binary, so it works offline.
//!
//! Only what the page loads is embedded (`assets/swagger-ui`): Swagger UI's bundle
//! and stylesheet, gzip-compressed at 425 KB and sent as they are with
//! `Content-Encoding: gzip`, plus a small page and initializer. The
//! `utoipa-swagger-ui` crate's vendored distribution put 11 MB in the binary,
//! half of it, with every bundle flavour and the source maps.

use axum::{
    Router,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Json, Redirect, Response},
    routing::get,
};

use super::ErrorBody;

const INDEX: &str = include_str!("../../assets/swagger-ui/index.html");
const INITIALIZER: &str = include_str!("../../assets/swagger-ui/swagger-initializer.js");
const BUNDLE_GZIP: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js.gz");
const CSS_GZIP: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css.gz");

/// Browsers may keep the assets for a day; a new release changes at most the page's look until then.
const CACHE: HeaderValue = HeaderValue::from_static("public, max-age=86400");

/// `/docs` (redirecting to `/docs/`, so that the page's relative asset paths resolve) and its assets.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/docs", get(|| async { Redirect::to("/docs/") }))
        .route("/docs/", get(|| async { text("text/html; charset=utf-8", INDEX) }))
        .route(
            "/docs/index.html",
            get(|| async { text("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/docs/swagger-initializer.js",
            get(|| async { text("text/javascript; charset=utf-8", INITIALIZER) }),
        )
        .route(
            "/docs/swagger-ui-bundle.js",
            get(|headers: HeaderMap| async move { gzipped(&headers, "text/javascript; charset=utf-8", BUNDLE_GZIP) }),
        )
        .route(
            "/docs/swagger-ui.css",
            get(|headers: HeaderMap| async move { gzipped(&headers, "text/css; charset=utf-8", CSS_GZIP) }),
        )
}

fn text(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn gzipped(headers: &HeaderMap, content_type: &'static str, body: &'static [u8]) -> Response {
    let vary = (header::VARY, HeaderValue::from_static("accept-encoding"));
    if !accepts_gzip(headers) {
        let detail = "This asset is only available gzip-compressed; send Accept-Encoding: gzip.".to_owned();
        return (StatusCode::NOT_ACCEPTABLE, [vary], Json(ErrorBody { detail })).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
            (header::CACHE_CONTROL, CACHE),
            vary,
        ],
        body,
    )
        .into_response()
}

/// Whether the client takes gzip: it sends no `Accept-Encoding` (RFC 9110, 12.5.3: any coding
/// is then acceptable), or it names `gzip` (or `x-gzip`), or a `*`, without `q=0`.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::ACCEPT_ENCODING).iter().peekable();
    if values.peek().is_none() {
        return true;
    }
    let mut gzip = None;
    let mut any = None;
    for coding in values.filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')) {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let weight = parts
            .find_map(|param| param.strip_prefix("q=").or_else(|| param.strip_prefix("Q=")))
            .map_or(1.0, |q| q.parse::<f32>().unwrap_or(0.0));
        if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(weight > 0.0);
        } else if name == "*" {
            any = Some(weight > 0.0);
        }
    }
    gzip.or(any).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn gzip_is_accepted_when_named_or_wildcarded_or_when_nothing_is_said() {
        for values in [
            &[][..],
            &["gzip, deflate, br, zstd"],
            &["br;q=1.0, GZIP;q=0.5"],
            &["x-gzip"],
            &["*"],
            &["identity", "gzip"],
        ] {
            assert!(accepts_gzip(&with(values)), "{values:?}");
        }
    }

    #[test]
    fn gzip_is_refused_when_absent_or_weighted_zero() {
        for values in [
            &["identity"][..],
            &["br, deflate"],
            &["gzip;q=0"],
            &["gzip; q=0.0, br"],
            &["gzip;q=0, *"],
            &["*;q=0"],
            &[""],
        ] {
            assert!(!accepts_gzip(&with(values)), "{values:?}");
        }
    }

    #[test]
    fn the_embedded_assets_are_gzip_streams_and_the_page_loads_only_them() {
        for asset in [BUNDLE_GZIP, CSS_GZIP] {
            assert_eq!(&asset[..3], &[0x1f, 0x8b, 8], "gzip magic and deflate");
        }
        for reference in ["./swagger-ui.css", "./swagger-ui-bundle.js", "./swagger-initializer.js"] {
            assert!(INDEX.contains(reference), "{reference}");
        }
        assert!(!INDEX.contains("://") && !INITIALIZER.contains("://"));
    }
}
