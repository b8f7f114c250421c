//! The HTTP surface around the routes: `/health`, CORS, request ids, 404/405, the OpenAPI
//! document and the docs page, and a `/health` that never waits on an upstream.

use std::time::{Duration, Instant};

use crate::helpers::*;
use serde_json::{Value, json};

fn product() -> Value {
    json!({"name": "Catnip Carnival", "tags": ["cat", "toy"]})
}

#[tokio::test]
async fn health_answers_exactly_status_version_capabilities_and_backend() {
    // Arrange
    let app = spawn_app(vec![]).await;

    // Act
    let response = app.get("/health").await;

    // Assert
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let (status, body) = status_and_json(response).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"status": "ok", "version": "0.1.0", "capabilities": ["description", "image"], "backend": "offline"})
        )
    );
}

#[tokio::test]
async fn health_reports_app_version_and_the_azure_backend() {
    let azure = azure_openai_answering("unused").await;
    let mut config = azure_key_vars(&azure);
    config.extend(vars(&[("APP_VERSION", "2.3.4-rc1")]));
    let app = spawn_app(config).await;

    let (status, body) = status_and_json(app.get("/health").await).await;

    assert_eq!(
        (status, body),
        (
            200,
            json!({"status": "ok", "version": "2.3.4-rc1", "capabilities": ["description"], "backend": "azure-openai"})
        )
    );
    assert_eq!(azure.count(), 0, "/health never calls the upstream");
}

#[tokio::test]
async fn head_health_answers_200_with_an_empty_body() {
    let app = spawn_app(vec![]).await;

    let response = app.client.head(app.url("/health")).send().await.unwrap();

    assert_eq!(response.status().as_u16(), 200);
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_cors_preflight_allows_any_origin_method_and_header() {
    // Arrange
    let app = spawn_app(vec![]).await;

    // Act
    let response = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/generate/description"))
        .header("origin", "http://store-admin.example:8081")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();

    // Assert
    assert!(response.status().is_success(), "{}", response.status());
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header("access-control-allow-origin"), "*");
    assert_eq!(header("access-control-allow-methods"), "*");
    assert_eq!(header("access-control-allow-headers"), "*");
}

#[tokio::test]
async fn a_post_with_an_origin_gets_access_control_allow_origin() {
    let app = spawn_app(vec![]).await;

    let response = app
        .client
        .post(app.url("/generate/description"))
        .header("origin", "http://store-admin.example:8081")
        .json(&product())
        .send()
        .await
        .unwrap();

    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn an_error_with_an_origin_also_gets_access_control_allow_origin() {
    // The store-admin must be able to read `detail` of an error from another origin.
    let app = spawn_app(vec![]).await;

    let response = app
        .client
        .post(app.url("/generate/description"))
        .header("origin", "http://store-admin.example:8081")
        .json(&json!({"name": "Bone"}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status().as_u16(), 422);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn the_callers_request_id_is_echoed_and_forwarded_to_the_upstream() {
    // Arrange
    let azure = azure_openai_answering("Traced prose.").await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    // Act
    let response = app
        .client
        .post(app.url("/generate/description"))
        .header("x-request-id", "req-from-product-service-42")
        .json(&product())
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.headers()["x-request-id"], "req-from-product-service-42");
    let (status, body) = status_and_json(response).await;
    assert_eq!((status, body), (200, json!({"description": "Traced prose."})));
    assert_eq!(
        azure.requests()[0].header("x-request-id"),
        Some("req-from-product-service-42")
    );
}

#[tokio::test]
async fn a_request_id_is_generated_when_absent_and_forwarded() {
    // Arrange
    let azure = azure_openai_answering("Traced prose.").await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    // Act
    let first = app.post_description(&product()).await;
    let second = app.post_description(&product()).await;

    // Assert
    let id = |response: &reqwest::Response| {
        response
            .headers()
            .get("x-request-id")
            .expect("a generated x-request-id")
            .to_str()
            .unwrap()
            .to_owned()
    };
    let (first_id, second_id) = (id(&first), id(&second));
    assert_eq!(first_id.len(), 36, "a UUID: {first_id}");
    assert_ne!(first_id, second_id, "one id per request");
    let requests = azure.requests();
    assert_eq!(requests[0].header("x-request-id"), Some(first_id.as_str()));
    assert_eq!(requests[1].header("x-request-id"), Some(second_id.as_str()));
}

#[tokio::test]
async fn health_also_carries_a_request_id() {
    let app = spawn_app(vec![]).await;

    let response = app.get("/health").await;

    assert!(response.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn an_unknown_route_answers_404_with_fastapis_body() {
    let app = spawn_app(vec![]).await;

    for path in ["/nope", "/generate", "/generate/video", "/api/ai/health"] {
        let (status, body) = status_and_json(app.get(path).await).await;
        assert_eq!((status, body), (404, json!({"detail": "Not Found"})), "{path}");
    }
    let (status, body) = status_and_json(app.post_json("/generate/nothing", &product()).await).await;
    assert_eq!((status, body), (404, json!({"detail": "Not Found"})));
}

#[tokio::test]
async fn a_wrong_method_answers_405_with_a_detail() {
    // Arrange
    let app = spawn_app(vec![]).await;

    // Act
    let put_health = app.client.put(app.url("/health")).send().await.unwrap();
    let get_description = app.get("/generate/description").await;
    let delete_image = app.client.delete(app.url("/generate/image")).send().await.unwrap();

    // Assert
    for response in [put_health, get_description, delete_image] {
        let url = response.url().clone();
        let (status, body) = status_and_json(response).await;
        assert_eq!((status, body), (405, json!({"detail": "Method Not Allowed"})), "{url}");
    }
}

#[tokio::test]
async fn the_openapi_document_lists_the_three_routes() {
    // Arrange
    let app = spawn_app(vec![]).await;

    // Act
    let (status, document) = status_and_json(app.get("/openapi.json").await).await;

    // Assert
    assert_eq!(status, 200);
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        document["openapi"]
    );
    let paths = document["paths"].as_object().unwrap();
    let mut names: Vec<&str> = paths.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["/generate/description", "/generate/image", "/health"]);
    assert!(paths["/health"]["get"].is_object());
    assert!(paths["/generate/description"]["post"].is_object());
    assert!(paths["/generate/image"]["post"].is_object());
}

/// The `href="…"` and `src="…"` values of an HTML page.
fn asset_references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["href=\"", "src=\""] {
        let mut rest = html;
        while let Some(start) = rest.find(attribute) {
            rest = &rest[start + attribute.len()..];
            let end = rest.find('"').unwrap();
            found.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    found
}

#[tokio::test]
async fn the_docs_page_and_its_assets_are_served_by_the_service_itself() {
    // Arrange
    let app = spawn_app(vec![]).await;

    // Act: /docs redirects to /docs/ (reqwest follows it)
    let response = app.get("/docs").await;

    // Assert: an HTML page
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.url().path(), "/docs/");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = response.text().await.unwrap();
    assert!(html.to_ascii_lowercase().contains("<html"), "{html:.200}");
    // Assert: every asset is relative, so no CDN is needed, and each is served
    let assets = asset_references(&html);
    assert!(
        assets.iter().any(|a| a.ends_with(".js")) && assets.iter().any(|a| a.ends_with(".css")),
        "{assets:?}"
    );
    for asset in &assets {
        assert!(
            !asset.contains("://") && !asset.starts_with("//"),
            "external asset: {asset}"
        );
        let url = app.url(&format!("/docs/{}", asset.trim_start_matches("./")));
        let response = app.client.get(&url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{url}");
        assert!(!response.bytes().await.unwrap().is_empty(), "{url}");
    }
    // Assert: the page loads our document
    let initializer = app.get("/docs/swagger-initializer.js").await.text().await.unwrap();
    assert!(initializer.contains("/openapi.json"), "{initializer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_at_once_while_a_description_waits_on_a_slow_upstream() {
    // Arrange: an upstream that takes 5 s, and a description request held by it
    let azure = MockServer::start(|_, _| {
        MockResponse::json(200, chat_completion("Worth the wait.")).delayed(Duration::from_secs(5))
    })
    .await;
    let app = spawn_app(azure_key_vars(&azure)).await;
    let slow = {
        let client = app.client.clone();
        let url = app.url("/generate/description");
        tokio::spawn(async move {
            let started = Instant::now();
            let response = client.post(url).json(&product()).send().await.unwrap();
            (response.status().as_u16(), started.elapsed())
        })
    };
    wait_until(PATIENCE, "the slow request to reach the upstream", || azure.count() > 0).await;

    // Act
    let started = Instant::now();
    let (status, body) = status_and_json(app.get("/health").await).await;
    let elapsed = started.elapsed();

    // Assert
    assert_eq!((status, &body["status"]), (200, &json!("ok")));
    // At once: while the description still waits on the upstream's 5 s (how fast is `make bench`'s business).
    assert!(
        !slow.is_finished(),
        "/health answered only after the description ({elapsed:?})"
    );
    let (slow_status, slow_elapsed) = slow.await.unwrap();
    assert_eq!(slow_status, 200);
    assert!(
        slow_elapsed >= Duration::from_millis(4900),
        "the description was not held by the upstream: {slow_elapsed:?}"
    );
}

#[tokio::test]
async fn an_unknown_docs_asset_answers_404_with_a_detail_too() {
    let app = spawn_app(vec![]).await;

    let (status, body) = status_and_json(app.get("/docs/no-such-asset.js").await).await;

    assert_eq!((status, body), (404, json!({"detail": "Not Found"})));
}

/// A raw HTTP/1.1 client on a blocking socket, like Python's `http.client`: it writes the
/// headers and `sent` body bytes of a `declared`-byte body, then reads whatever comes back
/// until the server closes. Returns how many body bytes the socket accepted, the answer,
/// and whether the server closed (EOF or reset) rather than left the socket open.
fn send_then_read(address: &str, declared: usize, sent: usize) -> (usize, String, bool) {
    use std::io::{ErrorKind, Read, Write};
    let mut stream = std::net::TcpStream::connect(address.trim_start_matches("http://")).unwrap();
    // Generous: only a server that never closes comes near it.
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST /generate/description HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut written = 0;
    while written < sent {
        let n = chunk.len().min(sent - written);
        match stream.write(&chunk[..n]) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    let closed = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break true,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(err) if err.kind() == ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (written, String::from_utf8_lossy(&answer).into_owned(), closed)
}

const TEN_MB: usize = 10 * 1024 * 1024;

#[tokio::test]
async fn a_client_that_writes_a_10_mb_body_before_reading_gets_the_413_with_its_detail() {
    // Arrange
    let app = spawn_app(vec![]).await;
    let address = app.address.clone();

    // Act: the whole body goes out before a single byte is read, as http.client does.
    let (written, answer, closed) = tokio::task::spawn_blocking(move || send_then_read(&address, TEN_MB, TEN_MB))
        .await
        .unwrap();

    // Assert
    assert_eq!(written, TEN_MB, "the service stopped reading: {answer}");
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert!(
        answer.ends_with(r#"{"detail":"The request body is larger than 65536 bytes."}"#),
        "{answer}"
    );
    assert!(closed, "the connection stayed open after the body was discarded");
}

#[tokio::test]
async fn a_client_that_stops_sending_after_the_413_gets_it_and_the_connection_is_closed() {
    // Arrange
    let app = spawn_app(vec![]).await;
    let address = app.address.clone();

    // Act: declares 10 MB, sends 1 MB, then only reads.
    let (_, answer, closed) = tokio::task::spawn_blocking(move || send_then_read(&address, TEN_MB, 1024 * 1024))
        .await
        .unwrap();

    // Assert: the answer arrives, and the service gives up waiting for the rest (after 2 s idle).
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.ends_with(r#"larger than 65536 bytes."}"#), "{answer}");
    assert!(closed, "the read timed out: the service held the connection open");
}

#[tokio::test]
async fn after_a_413_the_service_discards_at_most_32_mib_then_closes() {
    // Arrange
    let app = spawn_app(vec![]).await;
    let address = app.address.clone();
    let declared = 256 * 1024 * 1024;

    // Act: tries to push 256 MiB.
    let (written, answer, closed) = tokio::task::spawn_blocking(move || send_then_read(&address, declared, declared))
        .await
        .unwrap();

    // Assert: the socket stopped taking bytes past the 32 MiB bound plus the kernel's buffers.
    assert!(written < 64 * 1024 * 1024, "the service read {written} bytes");
    assert!(written > 32 * 1024 * 1024, "stopped early at {written} bytes");
    assert!(closed);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 413 "), "{answer}");
}

#[tokio::test]
async fn the_docs_assets_are_sent_gzip_compressed_and_refused_to_a_client_that_takes_no_gzip() {
    // Arrange
    let app = spawn_app(vec![]).await;

    for (asset, content_type) in [
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
    ] {
        // Act: as a browser asks
        let response = app
            .client
            .get(app.url(&format!("/docs/{asset}")))
            .header("accept-encoding", "gzip, deflate, br, zstd")
            .send()
            .await
            .unwrap();

        // Assert: the pre-compressed bytes, labelled as such
        assert_eq!(response.status().as_u16(), 200, "{asset}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-encoding"], "gzip", "{asset}");
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(content_type),
            "{asset}"
        );
        assert_eq!(headers["vary"], "accept-encoding", "{asset}");
        assert_eq!(&response.bytes().await.unwrap()[..2], &[0x1f, 0x8b], "{asset}");

        // Act: a client that takes only identity
        let refused = app
            .client
            .get(app.url(&format!("/docs/{asset}")))
            .header("accept-encoding", "identity")
            .send()
            .await
            .unwrap();

        // Assert
        let (status, body) = status_and_json(refused).await;
        assert_eq!(status, 406, "{asset}");
        assert!(body["detail"].as_str().unwrap().contains("gzip"), "{body}");
    }
}
