//! The binary's subcommands besides serving: `check` (troubleshoot the whole
//! path to Azure OpenAI from inside a pod) and `healthcheck` (the image's
//! HEALTHCHECK, since the image has no shell or curl).

use std::{io::Write, path::Path, time::Duration};

use secrecy::ExposeSecret;
use time::OffsetDateTime;

use crate::{
    Dependencies, build_services,
    config::{AzureAuth, Backend, Settings},
    llm::{CallContext, ChatPrompt, ProductFacts, UpstreamError},
};

/// Validates the configuration, gets one token, calls the chat model once with a tiny
/// prompt, and writes what happened to `out`. Returns whether everything worked.
///
/// It prints which credential worked, the token's expiry and the deployment's answer,
/// never the token, the federated assertion or a key.
pub async fn check(settings: &Settings, deps: Dependencies, out: &mut dyn Write) -> bool {
    let mut say = |line: String| {
        let _ = writeln!(out, "{line}");
    };
    say(format!("configuration: ok ({})", settings.summary()));
    for warning in &settings.warnings {
        say(format!("warning: {warning}"));
    }
    let services = match build_services(settings, deps) {
        Ok(services) => services,
        Err(err) => {
            say(format!("FAILED to set up the clients: {err}"));
            return false;
        }
    };
    if !services.credentials.is_empty() {
        say(format!("credentials: {}", services.credentials.join(", ")));
    }
    if let Some(file) = federated_token_file(settings) {
        say(format!("federated token file: {}", describe_file(file)));
    }
    if let Some(tokens) = &services.tokens {
        match tokens.token().await {
            Ok(token) => {
                let remaining = token.expires_on - OffsetDateTime::now_utc();
                // Facts about the token only: who issued it and when it expires, never its content.
                say(format!(
                    "token: ok from {} (expires {}, in {}; {} characters, not shown)",
                    token.credential,
                    azure_core::time::to_rfc3339(&token.expires_on.replace_nanosecond(0).unwrap_or(token.expires_on)),
                    human(remaining),
                    token.secret.expose_secret().len()
                ));
            }
            Err(err) => {
                say(format!("token: FAILED ({}): {}", err.credential, err.message));
                return false;
            }
        }
    }
    let prompt = ChatPrompt {
        system: "You are a connectivity check.".to_owned(),
        user: "Reply with the single word OK.".to_owned(),
        temperature: settings.temperature,
    };
    let facts = ProductFacts {
        name: "connectivity check".to_owned(),
        tags: Vec::new(),
    };
    let target = chat_target(settings);
    let ctx = CallContext::with_budget(settings.limits.description_timeout, Some("ai-service-check".to_owned()));
    match services.chat.complete(&prompt, &facts, &ctx).await {
        Ok(answer) => {
            let status = if matches!(settings.backend, Backend::Offline) {
                ""
            } else {
                " HTTP 2xx"
            };
            say(format!(
                "chat: ok, {target} answered{status} with a completion ({} characters)",
                answer.chars().count()
            ));
            true
        }
        Err(err) => {
            say(format!("chat: FAILED, {target} {}", chat_failure(settings, &err)));
            false
        }
    }
}

/// The token file, when workload identity is configured.
fn federated_token_file(settings: &Settings) -> Option<&Path> {
    match &settings.backend {
        Backend::Azure(azure) => match &azure.auth {
            AzureAuth::Entra(entra) => entra.workload_identity.as_ref().map(|wi| wi.token_file.as_path()),
            AzureAuth::ApiKey(_) => None,
        },
        _ => None,
    }
}

/// Whether the file is there, its size and age: never its content.
fn describe_file(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {
            let age = meta
                .modified()
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .map(|age| format!(", written {} ago", human_std(age)))
                .unwrap_or_default();
            format!("{} (present, {} bytes{age})", path.display(), meta.len())
        }
        Ok(_) => format!("{} (not a file)", path.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => format!("{} (missing)", path.display()),
        Err(err) => format!("{} (not accessible: {err})", path.display()),
    }
}

/// What the chat call goes to, for the output.
fn chat_target(settings: &Settings) -> String {
    match &settings.backend {
        Backend::Azure(azure) => format!("Azure OpenAI deployment `{}` at {}", azure.deployment, azure.endpoint),
        Backend::Local { endpoint, .. } => format!("the local model server at {endpoint}"),
        Backend::OpenAi { base_url, .. } => format!("the OpenAI API at {base_url}"),
        Backend::Offline => "the built-in offline generator (no model configured)".to_owned(),
    }
}

/// Why the chat call failed and what to check, with the HTTP status when there was one.
fn chat_failure(settings: &Settings, err: &UpstreamError) -> String {
    match err {
        UpstreamError::Unauthorized { status, entra: true } => format!(
            "answered HTTP {status} to the Microsoft Entra token. Give the identity the role \
             'Cognitive Services OpenAI User' on the Azure OpenAI resource (it can take a few minutes to apply), \
             and check that AZURE_OPENAI_ENDPOINT is the resource's custom subdomain."
        ),
        UpstreamError::Unauthorized { status, entra: false } => {
            format!("answered HTTP {status} to the API key; check the configured key.")
        }
        UpstreamError::NotFound { name } => format!(
            "answered HTTP 404: the deployment or model `{name}` was not found; check AZURE_OPENAI_DEPLOYMENT_NAME \
             and the endpoint."
        ),
        UpstreamError::Throttled { .. } => "answered HTTP 429 after every retry: authentication works, but the \
             deployment is throttling; try again later or raise its quota."
            .to_owned(),
        UpstreamError::Status { status } => format!("answered HTTP {status}; try again later."),
        UpstreamError::BadRequest { code, message } if message.is_empty() => format!("answered HTTP 400 ({code})."),
        UpstreamError::BadRequest { code, message } => format!("answered HTTP 400 ({code}): {message}"),
        UpstreamError::UnsupportedTemperature => {
            "answered HTTP 400: the model does not accept the configured TEMPERATURE; unset it or set TEMPERATURE=1."
                .to_owned()
        }
        UpstreamError::ContentFiltered => "answered, but its content filter blocked the check prompt.".to_owned(),
        UpstreamError::Timeout => format!(
            "did not answer within {} s (DESCRIPTION_TIMEOUT_SECONDS).",
            settings.limits.description_timeout.as_secs()
        ),
        UpstreamError::Unreachable(cause) => format!("could not be reached ({cause}); check DNS and egress."),
        UpstreamError::InvalidResponse(cause) => format!("answered with an unusable body ({cause})."),
        UpstreamError::Credential(sentence) | UpstreamError::Misconfigured(sentence) => {
            format!("was not called: {sentence}")
        }
    }
}

/// `59 min`, `42 s`, `2 h 5 min`; negative durations read as `expired`.
fn human(duration: time::Duration) -> String {
    match Duration::try_from(duration) {
        Ok(duration) => human_std(duration),
        Err(_) => "expired".to_owned(),
    }
}

fn human_std(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..120 => format!("{seconds} s"),
        120..7200 => format!("{} min", seconds / 60),
        _ => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
    }
}

/// GETs `http://127.0.0.1:{port}/health`; true on 200.
pub async fn healthcheck(port: u16) -> bool {
    let Ok(client) = reqwest::Client::builder().timeout(Duration::from_secs(3)).build() else {
        return false;
    };
    matches!(
        client.get(format!("http://127.0.0.1:{port}/health")).send().await,
        Ok(response) if response.status().is_success()
    )
}
