//! The binary's subcommands besides serving: `check` (troubleshoot the whole
//! path to Azure OpenAI from inside a pod) and `healthcheck` (the image's
//! HEALTHCHECK, since the image has no shell or curl).

use std::{collections::HashMap, io::Write, path::Path, time::Duration};

use secrecy::ExposeSecret;
use time::OffsetDateTime;

use crate::{
    Dependencies, build_services,
    config::{AzureAuth, Backend, Settings},
    credential::{
        AssertionClaims, MissingWorkloadIdentity, assertion_problem, claim_strings, explain_assertion,
        explain_missing_workload_identity, explain_regional_endpoint, is_regional_endpoint, unverified_claims,
    },
    error::{Operation, ROLE_PROPAGATION_ADVICE, upstream_clause},
    llm::{CallContext, ChatPrompt, ProductFacts, UpstreamError, pool::Capability},
    services::{Probe, ProbeModel},
};

/// How `check` runs, besides the environment it checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    /// `--wait SECONDS`: how long to keep retrying the chat call while Azure OpenAI refuses the
    /// Microsoft Entra token (a new role assignment takes minutes to reach it). Zero: no retry.
    pub wait: Duration,
    /// The pause between those retries, each one reporting the time waited so far.
    pub retry_interval: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            wait: Duration::ZERO,
            retry_interval: Duration::from_secs(10),
        }
    }
}

impl CheckOptions {
    /// Parses the arguments after `check`: `--wait SECONDS` or `--wait=SECONDS`.
    /// The error says which argument is wrong, for the usage message.
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut options = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let value = match arg.strip_prefix("--wait=") {
                Some(value) => value.to_owned(),
                None if arg == "--wait" => args
                    .next()
                    .ok_or_else(|| "`--wait` needs a number of seconds".to_owned())?,
                None => return Err(format!("unknown argument `{arg}` to `check`")),
            };
            let seconds: u64 = value
                .parse()
                .map_err(|_| format!("`--wait` takes a whole number of seconds, not `{value}`"))?;
            options.wait = Duration::from_secs(seconds);
        }
        Ok(options)
    }
}

fn say(out: &mut dyn Write, line: impl std::fmt::Display) {
    let _ = writeln!(out, "{line}");
}

/// Validates the configuration in `vars` (the process environment), finds the workload identity
/// mistakes that can be seen without calling anyone, gets one token, calls the chat model once
/// with a tiny prompt, and writes what happened to `out`. Returns whether everything worked.
///
/// It prints which credential worked, the claims of the federated token and of the access token
/// (decoded, not verified) and the deployment's answer: never a token, an assertion, a signature
/// or a key.
pub async fn check(
    vars: HashMap<String, String>,
    deps: Dependencies,
    options: &CheckOptions,
    out: &mut dyn Write,
) -> bool {
    let missing = missing_workload_identity(&vars);
    let settings = Settings::from_source(vars);
    match &settings {
        Ok(settings) => {
            say(out, format_args!("configuration: ok ({})", settings.summary()));
            for warning in &settings.warnings {
                say(out, format_args!("warning: {warning}"));
            }
        }
        Err(err) => say(out, format_args!("configuration: FAILED: {err}")),
    }
    // Said after the configuration either way: the missing webhook variables are the cause of
    // a configuration error as often as they are of a failed token exchange.
    if let Some(missing) = missing {
        say(
            out,
            format_args!(
                "workload identity: FAILED: {}",
                explain_missing_workload_identity(missing)
            ),
        );
        return false;
    }
    let Ok(settings) = settings else {
        return false;
    };
    if let Some(sentence) = regional_endpoint(&settings) {
        say(out, format_args!("endpoint: FAILED: {sentence}"));
        return false;
    }
    let services = match build_services(&settings, deps) {
        Ok(services) => services,
        Err(err) => {
            say(out, format_args!("FAILED to set up the clients: {err}"));
            return false;
        }
    };
    if !services.credentials.is_empty() {
        say(out, format_args!("credentials: {}", services.credentials.join(", ")));
    }
    if let Some(file) = federated_token_file(&settings) {
        say(out, format_args!("federated token file: {}", describe_file(file)));
        if !federated_token_is_usable(file, out) {
            return false;
        }
    }
    if let Some(tokens) = &services.tokens {
        match tokens.token().await {
            Ok(token) => {
                let remaining = token.expires_on - OffsetDateTime::now_utc();
                // Facts about the token only: who issued it and when it expires, never its content.
                say(
                    out,
                    format_args!(
                        "token: ok from {} (expires {}, in {}; {} characters, not shown)",
                        token.credential,
                        azure_core::time::to_rfc3339(
                            &token.expires_on.replace_nanosecond(0).unwrap_or(token.expires_on)
                        ),
                        human(remaining),
                        token.secret().expose_secret().len()
                    ),
                );
                say(
                    out,
                    format_args!(
                        "token identity: {}",
                        describe_access_token(token.secret().expose_secret(), &settings)
                    ),
                );
            }
            Err(err) => {
                say(out, format_args!("token: FAILED ({}): {}", err.credential, err.message));
                return false;
            }
        }
    }
    call_every_deployment(&settings, &services, options, out).await
}

/// Calls every deployment of both pools once, on its own; while Azure OpenAI refuses the Entra
/// token and `--wait` allows, again every `retry_interval`, saying how long it has waited.
/// True when every deployment answered.
async fn call_every_deployment(
    settings: &Settings,
    services: &crate::Services,
    options: &CheckOptions,
    out: &mut dyn Write,
) -> bool {
    let mut answered = 0;
    for probe in &services.probes {
        if call(settings, probe, options, out).await {
            answered += 1;
        }
    }
    let total = services.probes.len();
    if total > 1 {
        say(out, format_args!("deployments: {answered} of {total} answered"));
    }
    answered == total
}

async fn call(settings: &Settings, probe: &Probe, options: &CheckOptions, out: &mut dyn Write) -> bool {
    let label = probe.capability.label();
    let target = &probe.target;
    let started = tokio::time::Instant::now();
    let mut waited = false;
    loop {
        let budget = match probe.capability {
            Capability::Chat => settings.limits.description_timeout,
            Capability::Image => settings.limits.image_timeout,
        };
        let ctx = CallContext::with_budget(budget, Some("ai-service-check".to_owned()));
        let facts = ProductFacts {
            name: "connectivity check".to_owned(),
            tags: Vec::new(),
        };
        let result = match &probe.model {
            ProbeModel::Chat(model) => {
                let prompt = ChatPrompt {
                    system: "You are a connectivity check.".to_owned(),
                    user: "Reply with the single word OK.".to_owned(),
                    temperature: settings.temperature,
                };
                model
                    .complete(&prompt, &facts, &ctx)
                    .await
                    .map(|answer| format!("a completion ({} characters)", answer.chars().count()))
            }
            ProbeModel::Image(model) => model
                .generate("A plain white square, for a connectivity check.", &facts, &ctx)
                .await
                .map(|_| "an image".to_owned()),
        };
        let err = match result {
            Ok(what) => {
                let status = if matches!(settings.backend, Backend::Offline) {
                    ""
                } else {
                    " HTTP 2xx"
                };
                let after = if waited {
                    format!(" after waiting {}", human_std(started.elapsed()))
                } else {
                    String::new()
                };
                say(
                    out,
                    format_args!("{label}: ok, {target} answered{status} with {what}{after}"),
                );
                return true;
            }
            Err(err) => err,
        };
        let remaining = options.wait.saturating_sub(started.elapsed());
        match err {
            UpstreamError::Unauthorized { status, entra: true } if !remaining.is_zero() => {
                let pause = options.retry_interval.min(remaining);
                say(
                    out,
                    format_args!(
                        "{label}: HTTP {status} after {} of --wait {}; the role assignment may not have reached Azure \
                         OpenAI yet, trying again in {}",
                        human_std(started.elapsed()),
                        human_std(options.wait),
                        human_std(pause)
                    ),
                );
                waited = true;
                tokio::time::sleep(pause).await;
            }
            err => {
                let refused_entra = matches!(err, UpstreamError::Unauthorized { entra: true, .. });
                let operation = match probe.capability {
                    Capability::Chat => Operation::Description,
                    Capability::Image => Operation::Image,
                };
                let mut reason = upstream_clause(operation, err);
                if refused_entra {
                    if options.wait.is_zero() {
                        reason = format!("{reason}. {ROLE_PROPAGATION_ADVICE}");
                    } else {
                        reason = format!(
                            "{reason}. It was still refused after --wait {}.",
                            human_std(options.wait)
                        );
                    }
                }
                say(out, format_args!("{label}: FAILED, {target}: {reason}"));
                return false;
            }
        }
    }
}

/// Whether a variable is set to something (an empty value means unset, as for the settings).
fn is_set(vars: &HashMap<String, String>, name: &str) -> bool {
    vars.get(name).is_some_and(|value| !value.trim().is_empty())
}

fn is_true(vars: &HashMap<String, String>, name: &str) -> bool {
    vars.get(name)
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("true"))
}

/// In a Kubernetes pod that asks for Entra auth to Azure OpenAI (and not for a managed identity),
/// the workload identity variables the webhook should have injected but did not.
fn missing_workload_identity(vars: &HashMap<String, String>) -> Option<MissingWorkloadIdentity> {
    let wants_workload_identity = is_set(vars, "KUBERNETES_SERVICE_HOST")
        && is_true(vars, "USE_AZURE_OPENAI")
        && is_true(vars, "USE_AZURE_AD")
        && !is_true(vars, "USE_LOCAL_LLM")
        && !is_true(vars, "AZURE_USE_MANAGED_IDENTITY");
    if !wants_workload_identity {
        return None;
    }
    MissingWorkloadIdentity::new(
        !is_set(vars, "AZURE_FEDERATED_TOKEN_FILE"),
        !is_set(vars, "AZURE_CLIENT_ID"),
        !is_set(vars, "AZURE_TENANT_ID"),
    )
}

/// With Entra auth, the sentence for an endpoint that is regional instead of the resource's subdomain.
fn regional_endpoint(settings: &Settings) -> Option<String> {
    let Backend::Azure(azure) = &settings.backend else {
        return None;
    };
    if !matches!(azure.auth, AzureAuth::Entra(_)) {
        return None;
    }
    let chat = azure.chat.iter().map(|d| ("AZURE_OPENAI_ENDPOINT", &d.endpoint));
    let image = settings
        .image
        .iter()
        .map(|d| ("AZURE_OPENAI_IMAGE_ENDPOINT", &d.endpoint));
    chat.chain(image)
        .find(|(_, endpoint)| is_regional_endpoint(endpoint))
        .map(|(variable, endpoint)| explain_regional_endpoint(variable, endpoint))
}

/// Prints the federated token's claims and says whether Microsoft Entra ID could accept it.
/// A file that cannot be read is left to the token exchange, which explains why.
fn federated_token_is_usable(file: &Path, out: &mut dyn Write) -> bool {
    let Ok(content) = std::fs::read_to_string(file) else {
        return true;
    };
    let now = OffsetDateTime::now_utc();
    let claims = AssertionClaims::from_jwt(&content);
    if let Some(claims) = &claims {
        say(
            out,
            format_args!("federated token claims: {}", describe_assertion(claims, now)),
        );
    }
    match assertion_problem(file, claims.as_ref(), now) {
        Some(problem) => {
            say(
                out,
                format_args!(
                    "federated token: FAILED: {}",
                    explain_assertion(problem, file, claims.as_ref(), now)
                ),
            );
            false
        }
        None => true,
    }
}

/// `iss`, `sub`, `aud`, `exp` and `iat` of the service account token: never the token or its signature.
fn describe_assertion(claims: &AssertionClaims, now: OffsetDateTime) -> String {
    let unknown = || "<none>".to_owned();
    let time = |at: OffsetDateTime| azure_core::time::to_rfc3339(&at);
    let expires = claims.expires.map_or_else(unknown, |exp| {
        let left = exp - now;
        if left.is_positive() {
            format!("{} (in {})", time(exp), human(left))
        } else {
            format!("{} ({} ago, expired)", time(exp), human(-left))
        }
    });
    let issued = claims
        .issued
        .map(|iat| format!(", iat={} ({} ago)", time(iat), human(now - iat)))
        .unwrap_or_default();
    format!(
        "iss={}, sub={}, aud={}, exp={expires}{issued} (decoded without verification; the token is not shown)",
        claims.issuer.clone().unwrap_or_else(unknown),
        claims.subject.clone().unwrap_or_else(unknown),
        claims.audience_text(),
    )
}

/// Whom the access token was issued to and for what, from its claims (decoded, not verified), so a
/// node's identity or a wrong audience shows; and a note when it is not the configured identity.
fn describe_access_token(token: &str, settings: &Settings) -> String {
    let Some(claims) = unverified_claims(token) else {
        return "unknown (the access token is not a JWT; not shown)".to_owned();
    };
    let claim = |name: &str| claim_strings(&claims, name).join(", ");
    let app_id = [claim("appid"), claim("azp")]
        .into_iter()
        .find(|id| !id.is_empty())
        .unwrap_or_default();
    let unknown = |value: String| if value.is_empty() { "<none>".to_owned() } else { value };
    let mut text = format!(
        "appid={}, oid={}, tid={}, aud={} (decoded without verification; the token is not shown)",
        unknown(app_id.clone()),
        unknown(claim("oid")),
        unknown(claim("tid")),
        unknown(claim("aud")),
    );
    if let Backend::Azure(azure) = &settings.backend {
        if let AzureAuth::Entra(entra) = &azure.auth {
            if let Some(wi) = &entra.workload_identity {
                if !app_id.is_empty() && !app_id.eq_ignore_ascii_case(&wi.client_id) {
                    text.push_str(&format!(
                        "; note: this is not the identity in AZURE_CLIENT_ID ({})",
                        wi.client_id
                    ));
                }
            }
        }
    }
    text
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
