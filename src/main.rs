//! Entry point: wires telemetry, settings, state and the listener, and nothing else.

use std::{io::Write, process::ExitCode};

use ai_service::{
    AppState, Dependencies, app, build_services, commands, config::Settings, listener, serve, shutdown_signal,
    telemetry,
};

const USAGE: &str = "\
usage: ai-service [COMMAND]

  serve        run the HTTP service (the default); configured by environment variables, see README.md
  check [--wait SECONDS]
               validate the configuration and the workload identity setup, get one token, call the
               chat model once, and report; --wait retries the call for up to SECONDS while Azure
               OpenAI refuses the token (a new role assignment takes minutes to reach it)
  healthcheck  exit 0 when the local service answers GET /health (the image's HEALTHCHECK)
  openapi      print the OpenAPI document as YAML
  --version    print the version
";

fn main() -> ExitCode {
    // Sized to the CPU quota: one thread in a pod limited to one CPU or less.
    ai_service::runtime::block_on(async_main(), |err| {
        let _ = writeln!(std::io::stderr(), "cannot start the async runtime: {err}");
        ExitCode::FAILURE
    })
}

async fn async_main() -> ExitCode {
    // Only ./.env (not a parent's): a missing one is normal, and it never overrides the real environment.
    let _ = dotenvy::from_path(".env");
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => run().await,
        Some("check") => match commands::CheckOptions::from_args(std::env::args().skip(2)) {
            Ok(options) => check(&options).await,
            Err(reason) => usage_error(&reason),
        },
        Some("healthcheck") => healthcheck().await,
        Some("openapi") => match ai_service::routes::openapi().to_yaml() {
            Ok(yaml) => exit(std::io::stdout().write_all(yaml.as_bytes()).is_ok()),
            Err(err) => {
                let _ = writeln!(std::io::stderr(), "could not write the OpenAPI document as YAML: {err}");
                ExitCode::FAILURE
            }
        },
        Some("-V" | "--version") => {
            exit(writeln!(std::io::stdout(), "ai-service {}", env!("CARGO_PKG_VERSION")).is_ok())
        }
        Some("-h" | "--help") => exit(std::io::stdout().write_all(USAGE.as_bytes()).is_ok()),
        Some(other) => usage_error(&format!("unknown command `{other}`")),
    }
}

fn usage_error(reason: &str) -> ExitCode {
    let _ = write!(std::io::stderr(), "{reason}\n\n{USAGE}");
    ExitCode::from(2)
}

fn exit(ok: bool) -> ExitCode {
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

async fn run() -> ExitCode {
    let settings = Settings::from_env();
    let telemetry = telemetry::init(
        settings.as_ref().map(|s| s.log_format).unwrap_or_default(),
        settings.as_ref().ok().map(|s| &s.telemetry),
    );
    let settings = match settings {
        Ok(settings) => settings,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let services = match build_services(&settings, Dependencies::default()) {
        Ok(services) => services,
        Err(err) => {
            tracing::error!("{err:?}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(credentials = ?services.credentials, "configuration: {}", settings.summary());
    if matches!(settings.backend, ai_service::config::Backend::Offline) {
        tracing::warn!(
            "no model is configured: serving built-in offline descriptions and placeholder images. \
             Set USE_AZURE_OPENAI=True with AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT_NAME \
             (and USE_AZURE_AD=True for passwordless auth), or OPENAI_API_KEY, or USE_LOCAL_LLM=True with LOCAL_LLM_ENDPOINT"
        );
    }
    if let Some(tokens) = services.tokens.clone() {
        // Fetch the first token in the background: a broken identity setup shows in the
        // log at startup instead of at the first click, and startup does not wait for Entra.
        tokio::spawn(async move {
            if let Err(err) = tokens.token().await {
                tracing::error!(
                    credential = err.credential,
                    "no Microsoft Entra token at startup: {}",
                    err.message
                );
            }
        });
    }
    let grace = settings.limits.shutdown_grace;
    let state = AppState::new(&settings, services);
    let listener = match listener::bind(settings.host, settings.port) {
        Ok(listener) => listener,
        Err(err) => {
            let host = settings
                .host
                .map_or_else(|| "every address".to_owned(), |ip| ip.to_string());
            tracing::error!("cannot listen on {host}, port {}: {err}", settings.port);
            return ExitCode::FAILURE;
        }
    };
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "listening");
    }
    let served = serve(listener, app(state), shutdown_signal(), grace).await;
    telemetry.shutdown().await;
    match served {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!("server error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn check(options: &commands::CheckOptions) -> ExitCode {
    let vars = std::env::vars().collect();
    exit(commands::check(vars, Dependencies::default(), options, &mut std::io::stdout()).await)
}

async fn healthcheck() -> ExitCode {
    let port = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5001);
    exit(commands::healthcheck(port).await)
}
