//! The binary's subcommands besides serving: `check` (troubleshoot the whole
//! path to Azure OpenAI from inside a pod) and `healthcheck` (the image's
//! HEALTHCHECK, since the image has no shell or curl).

use std::{io::Write, time::Duration};

use secrecy::ExposeSecret;

use crate::{
    Dependencies, build_services,
    config::Settings,
    llm::{CallContext, ChatPrompt, ProductFacts},
};

/// Validates the configuration, gets one token, calls the chat model once with a tiny
/// prompt, and writes what happened to `out`. Returns whether everything worked.
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
    if let Some(tokens) = &services.tokens {
        match tokens.token().await {
            Ok(token) => {
                // Only a fingerprint-free fact about the token: its length, never its content.
                say(format!(
                    "token: ok from {} (expires {}, {} characters)",
                    token.credential,
                    token.expires_on,
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
    let ctx = CallContext::with_budget(settings.limits.description_timeout, Some("ai-service-check".to_owned()));
    match services.chat.complete(&prompt, &facts, &ctx).await {
        Ok(answer) => {
            say(format!(
                "chat ({}): ok, answered {} characters",
                settings.backend.name(),
                answer.chars().count()
            ));
            true
        }
        Err(err) => {
            say(format!("chat ({}): FAILED: {err}", settings.backend.name()));
            false
        }
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
