//! The committed `openapi.yaml` is what the code generates, and it documents every response.

use serde_json::Value;

#[test]
fn the_committed_openapi_yaml_matches_the_code() {
    let generated = ai_service::routes::openapi()
        .to_yaml()
        .expect("the document serialises");
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap_or_default();
    assert!(
        generated == committed,
        "openapi.yaml is out of date: run `make openapi` and commit the result"
    );
}

#[test]
fn every_route_of_the_contract_is_documented_and_every_response_has_a_description() {
    let document: Value = serde_json::to_value(ai_service::routes::openapi()).unwrap();
    let paths = document["paths"].as_object().unwrap();
    for (path, method) in [
        ("/health", "get"),
        ("/health", "head"),
        ("/generate/description", "post"),
        ("/generate/image", "post"),
    ] {
        let operation = &paths[path][method];
        let responses = operation["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} is not documented"));
        assert!(responses.contains_key("200"), "{method} {path} has no 200");
        for (status, response) in responses {
            let description = response["description"].as_str().unwrap_or_default();
            assert!(
                !description.trim().is_empty(),
                "{method} {path} {status} has no description"
            );
        }
    }
    for path in ["/generate/description", "/generate/image"] {
        assert!(
            paths[path]["post"]["responses"].get("422").is_some(),
            "{path} documents its validation errors"
        );
    }
}
