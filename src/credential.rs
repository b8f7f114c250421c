//! Passwordless authentication to Azure OpenAI with Microsoft Entra ID.
//!
//! One credential chain is built at startup (workload identity on AKS, else the
//! developer's `az`/`azd` login, managed identity only on opt-in) and put behind
//! one [`SharedTokenCache`]: a token is fetched once per lifetime, refreshed
//! ahead of expiry, and concurrent callers share one acquisition. Failures are
//! turned into a sentence that says which credential failed and what to check;
//! no token or assertion is ever logged.

use std::{
    fmt,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use azure_core::{
    cloud::{CloudConfiguration, CustomConfiguration},
    credentials::{AccessToken, TokenCredential, TokenRequestOptions},
    error::ErrorKind,
    http::{ClientMethodOptions, ClientOptions, ExponentialRetryOptions, RetryOptions, Transport},
};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, AzureDeveloperCliCredential, AzureDeveloperCliCredentialOptions,
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions, Executor, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId,
};
use secrecy::SecretString;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::{config::EntraSettings, metrics::Metrics};

/// The longest a token is refreshed ahead of its expiry (the SDK's own margin).
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// After a failed acquisition, callers within this window get the same error
/// instead of queueing another attempt against a dead endpoint.
const FAILURE_HOLD: Duration = Duration::from_secs(1);

/// A bearer token for Azure OpenAI.
#[derive(Clone)]
pub struct BearerToken {
    /// The token; never logged.
    pub secret: SecretString,
    /// When it expires.
    pub expires_on: OffsetDateTime,
    /// Which credential produced it.
    pub credential: &'static str,
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerToken")
            .field("expires_on", &self.expires_on)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// A token could not be obtained. `message` is safe to show to a person.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TokenError {
    /// Which credential failed.
    pub credential: &'static str,
    /// What failed and what to check.
    pub message: String,
}

/// Hands out bearer tokens for Azure OpenAI.
#[async_trait::async_trait]
pub trait TokenProvider: Send + Sync + fmt::Debug {
    /// A token valid for at least the next request.
    async fn token(&self) -> Result<BearerToken, TokenError>;
}

/// What the credentials need besides the settings; tests inject both.
#[derive(Clone, Default)]
pub struct CredentialOptions {
    /// HTTP client for Microsoft Entra ID (built with a timeout and the trusted roots).
    pub http: Option<reqwest::Client>,
    /// How `az`/`azd` are run; defaults to a tokio process.
    pub executor: Option<Arc<dyn Executor>>,
}

impl fmt::Debug for CredentialOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialOptions").finish_non_exhaustive()
    }
}

/// One source of tokens in the chain, with what a person needs to fix it.
struct Source {
    name: &'static str,
    credential: Arc<dyn TokenCredential>,
    hints: Hints,
}

#[derive(Clone, Default)]
struct Hints {
    client_id: Option<String>,
    tenant_id: Option<String>,
    token_file: Option<PathBuf>,
    authority: Option<String>,
}

/// Builds the chain for `settings` and puts the one cache in front of it.
pub fn token_provider(
    settings: &EntraSettings,
    options: CredentialOptions,
    metrics: Metrics,
) -> azure_core::Result<Arc<SharedTokenCache>> {
    let client_options = || ClientOptions {
        transport: options.http.clone().map(|client| Transport::new(Arc::new(client))),
        // The SDK's default retries for a minute; a dead endpoint must fail in seconds.
        retry: RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: azure_core::time::Duration::milliseconds(200),
            max_retries: 2,
            max_total_elapsed: azure_core::time::Duration::seconds(5),
            max_delay: azure_core::time::Duration::seconds(2),
        }),
        ..Default::default()
    };
    let mut sources = Vec::new();
    if let Some(wi) = &settings.workload_identity {
        let authority = wi.authority_host.as_str().trim_end_matches('/').to_owned();
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = authority.clone();
        let client_options = ClientOptions {
            cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
            ..client_options()
        };
        let credential = ClientAssertionCredential::new(
            wi.tenant_id.clone(),
            wi.client_id.clone(),
            FederatedTokenFile {
                path: wi.token_file.clone(),
            },
            Some(ClientAssertionCredentialOptions { client_options }),
        )?;
        sources.push(Source {
            name: "WorkloadIdentityCredential",
            credential,
            hints: Hints {
                client_id: Some(wi.client_id.clone()),
                tenant_id: Some(wi.tenant_id.clone()),
                token_file: Some(wi.token_file.clone()),
                authority: Some(authority),
            },
        });
    } else if settings.managed_identity {
        let credential = ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
            user_assigned_id: settings.client_id.clone().map(UserAssignedId::ClientId),
            client_options: client_options(),
        }))?;
        sources.push(Source {
            name: "ManagedIdentityCredential",
            credential,
            hints: Hints {
                client_id: settings.client_id.clone(),
                ..Default::default()
            },
        });
    } else {
        let cli = AzureCliCredential::new(Some(AzureCliCredentialOptions {
            executor: options.executor.clone(),
            tenant_id: settings.tenant_id.clone(),
            ..Default::default()
        }))?;
        let azd = AzureDeveloperCliCredential::new(Some(AzureDeveloperCliCredentialOptions {
            executor: options.executor.clone(),
            tenant_id: settings.tenant_id.clone(),
        }))?;
        let hints = Hints {
            tenant_id: settings.tenant_id.clone(),
            ..Default::default()
        };
        sources.push(Source {
            name: "AzureCliCredential",
            credential: cli,
            hints: hints.clone(),
        });
        sources.push(Source {
            name: "AzureDeveloperCliCredential",
            credential: azd,
            hints,
        });
    }
    Ok(Arc::new(SharedTokenCache {
        scope: settings.scope.clone(),
        sources,
        sticky: AtomicUsize::new(usize::MAX),
        state: Mutex::new(CacheState::default()),
        metrics,
    }))
}

/// The projected service-account token, re-read on every token exchange so a
/// rotation by the kubelet is seen at once (the SDK's own re-reads every 600 s).
#[derive(Debug)]
struct FederatedTokenFile {
    path: PathBuf,
}

#[async_trait::async_trait]
impl ClientAssertion for FederatedTokenFile {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        let content = tokio::fs::read_to_string(&self.path).await.map_err(|err| {
            azure_core::Error::with_message(
                ErrorKind::Credential,
                format!("cannot read the federated token file {}: {err}", self.path.display()),
            )
        })?;
        let assertion = content.trim();
        if assertion.is_empty() {
            return Err(azure_core::Error::with_message(
                ErrorKind::Credential,
                format!("the federated token file {} is empty", self.path.display()),
            ));
        }
        Ok(assertion.to_owned())
    }
}

#[derive(Default)]
struct CacheState {
    token: Option<(BearerToken, OffsetDateTime)>,
    last_failure: Option<(tokio::time::Instant, TokenError)>,
}

/// The one token cache in front of the chain. Callers hold its mutex while a
/// token is acquired, so concurrent requests share that one acquisition.
pub struct SharedTokenCache {
    scope: String,
    sources: Vec<Source>,
    sticky: AtomicUsize,
    state: Mutex<CacheState>,
    metrics: Metrics,
}

impl fmt::Debug for SharedTokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTokenCache")
            .field("scope", &self.scope)
            .field("credentials", &self.credential_names())
            .finish_non_exhaustive()
    }
}

impl SharedTokenCache {
    /// The credentials tried, in order: what the startup log names.
    pub fn credential_names(&self) -> Vec<&'static str> {
        self.sources.iter().map(|s| s.name).collect()
    }

    async fn acquire(&self) -> Result<BearerToken, TokenError> {
        let sticky = self.sticky.load(Ordering::Relaxed);
        let order: Vec<usize> = if sticky < self.sources.len() {
            vec![sticky]
        } else {
            (0..self.sources.len()).collect()
        };
        let mut failures = Vec::new();
        for index in order {
            let source = &self.sources[index];
            match source
                .credential
                .get_token(&[&self.scope], Some(TokenRequestOptions::default()))
                .await
            {
                Ok(AccessToken { token, expires_on, .. }) => {
                    self.sticky.store(index, Ordering::Relaxed);
                    self.metrics.token(source.name, "success");
                    tracing::info!(credential = source.name, expires_on = %expires_on, "acquired a Microsoft Entra token");
                    return Ok(BearerToken {
                        secret: SecretString::from(token.secret().to_owned()),
                        expires_on,
                        credential: source.name,
                    });
                }
                Err(err) => {
                    self.metrics.token(source.name, "failure");
                    let message = explain(source.name, &source.hints, &self.scope, &err);
                    tracing::warn!(credential = source.name, error = %message, "token acquisition failed");
                    failures.push(TokenError {
                        credential: source.name,
                        message,
                    });
                }
            }
        }
        if failures.len() == 1 {
            return Err(failures.remove(0));
        }
        Err(TokenError {
            credential: "developer-tools",
            message: format!(
                "No credential could get a Microsoft Entra token: {}",
                failures
                    .iter()
                    .map(|f| f.message.as_str())
                    .collect::<Vec<_>>()
                    .join(" / ")
            ),
        })
    }
}

#[async_trait::async_trait]
impl TokenProvider for SharedTokenCache {
    async fn token(&self) -> Result<BearerToken, TokenError> {
        let mut state = self.state.lock().await;
        let now = OffsetDateTime::now_utc();
        if let Some((token, refresh_at)) = &state.token {
            if now < *refresh_at {
                return Ok(token.clone());
            }
        }
        if let Some((at, err)) = &state.last_failure {
            if at.elapsed() < FAILURE_HOLD {
                return Err(err.clone());
            }
        }
        match self.acquire().await {
            Ok(token) => {
                let lifetime: time::Duration = token.expires_on - now;
                let max_margin = time::Duration::try_from(MAX_REFRESH_MARGIN).unwrap_or(time::Duration::ZERO);
                let margin = std::cmp::min(lifetime / 4_i32, max_margin);
                state.token = Some((token.clone(), token.expires_on - margin));
                state.last_failure = None;
                Ok(token)
            }
            Err(err) => {
                // An expired token is useless; one still valid keeps serving while the refresh fails.
                if let Some((token, _)) = &state.token {
                    if token.expires_on - now > time::Duration::seconds(30) {
                        tracing::warn!("refresh failed; using the current token until it expires");
                        return Ok(token.clone());
                    }
                }
                state.token = None;
                state.last_failure = Some((tokio::time::Instant::now(), err.clone()));
                Err(err)
            }
        }
    }
}

/// Every message in an error's chain, outermost first.
fn chain_text(err: &azure_core::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        parts.push(inner.to_string());
        source = inner.source();
    }
    parts.join(": ")
}

fn is_transport(err: &azure_core::Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(azure) = e.downcast_ref::<azure_core::Error>() {
            if matches!(azure.kind(), ErrorKind::Io) {
                return true;
            }
        }
        if let Some(reqwest) = e.downcast_ref::<reqwest::Error>() {
            if reqwest.is_connect() || reqwest.is_timeout() || reqwest.is_request() {
                return true;
            }
        }
        current = e.source();
    }
    false
}

/// A sentence for a person: which credential failed, why, and what to check.
fn explain(credential: &'static str, hints: &Hints, scope: &str, err: &azure_core::Error) -> String {
    let text = chain_text(err);
    let client_id = hints.client_id.as_deref().unwrap_or("<unset>");
    let tenant_id = hints.tenant_id.as_deref().unwrap_or("<unset>");
    let token_file = hints
        .token_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let authority = hints.authority.as_deref().unwrap_or("Microsoft Entra ID");
    let has = |needle: &str| text.contains(needle);
    match credential {
        "WorkloadIdentityCredential" => {
            if has("federated token file") {
                format!(
                    "Workload identity: the federated token file {token_file} (AZURE_FEDERATED_TOKEN_FILE) could not be read. \
                     Check that the pod has the label azure.workload.identity/use: \"true\" and runs with the annotated ServiceAccount, \
                     so the webhook mounts the token."
                )
            } else if has("AADSTS700016") {
                format!(
                    "Workload identity: Microsoft Entra ID does not know client id {client_id} in tenant {tenant_id} (AADSTS700016). \
                     Check that the ServiceAccount annotation azure.workload.identity/client-id holds the managed identity's clientId."
                )
            } else if has("AADSTS70021") {
                format!(
                    "Workload identity: no federated credential of identity {client_id} matches this pod's token (AADSTS70021). \
                     Check that the federated credential's issuer is the cluster's OIDC issuer URL and its subject is \
                     system:serviceaccount:<namespace>:<service account>."
                )
            } else if has("AADSTS700024") {
                format!(
                    "Workload identity: the service account token in {token_file} has expired (AADSTS700024). \
                     The kubelet rotates it; check the projected token volume is mounted and the node's clock is right."
                )
            } else if has("AADSTS90002") || has("AADSTS900023") {
                format!("Workload identity: tenant {tenant_id} was not found. Check AZURE_TENANT_ID.")
            } else if has("invalid_client") || has("AADSTS") {
                let code = aadsts_code(&text).unwrap_or_else(|| "invalid_client".to_owned());
                format!(
                    "Workload identity: Microsoft Entra ID rejected identity {client_id} ({code}). \
                     Check the managed identity, its federated credential and the ServiceAccount annotation."
                )
            } else if is_transport(err) {
                format!(
                    "Workload identity: could not reach {authority} to get a token. \
                     Check the pod's DNS and egress to the authority host (AZURE_AUTHORITY_HOST)."
                )
            } else {
                format!(
                    "Workload identity: getting a token for {scope} failed. Check the pod's workload identity setup."
                )
            }
        }
        "AzureCliCredential" => {
            if has("not found") || has("not installed") || has("No such file") || has("command not found") {
                "Azure CLI: `az` was not found on PATH. Install the Azure CLI and run `az login`, \
                 or run the service on AKS with workload identity."
                    .to_owned()
            } else if has("az login") || has("AADSTS") || has("expired") {
                "Azure CLI: the login has expired or is missing. Run `az login` (with --tenant if needed) and try again.".to_owned()
            } else {
                "Azure CLI: `az account get-access-token` failed. Run it yourself to see why, then `az login` if needed.".to_owned()
            }
        }
        "AzureDeveloperCliCredential" => {
            if has("not found") || has("not installed") || has("No such file") {
                "Azure Developer CLI: `azd` is not installed.".to_owned()
            } else {
                "Azure Developer CLI: `azd auth token` failed; run `azd auth login`.".to_owned()
            }
        }
        _ => {
            if is_transport(err) {
                "Managed identity: the instance metadata endpoint (IMDS) could not be reached.".to_owned()
            } else {
                format!(
                    "Managed identity: no token for identity {client_id}. Check the identity is assigned to the node or VM \
                     (AZURE_USE_MANAGED_IDENTITY is set)."
                )
            }
        }
    }
}

fn aadsts_code(text: &str) -> Option<String> {
    let start = text.find("AADSTS")?;
    let digits: String = text[start + 6..].chars().take_while(char::is_ascii_digit).collect();
    Some(format!("AADSTS{digits}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aadsts_codes_are_extracted() {
        assert_eq!(
            aadsts_code("x: AADSTS700213: No matching").as_deref(),
            Some("AADSTS700213")
        );
        assert_eq!(aadsts_code("nothing"), None);
    }

    #[test]
    fn a_token_never_shows_in_debug() {
        let token = BearerToken {
            secret: SecretString::from("eyJ-very-secret".to_owned()),
            expires_on: OffsetDateTime::now_utc(),
            credential: "x",
        };
        assert!(!format!("{token:?}").contains("very-secret"));
    }
}
