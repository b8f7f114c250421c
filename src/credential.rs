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
    path::{Path, PathBuf},
    sync::{
        Arc, PoisonError,
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

use crate::{config::EntraSettings, metrics::Metrics};

/// The longest a token is refreshed ahead of its expiry (the SDK's own margin).
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// While a refresh is running (or failing), the current token keeps being handed
/// out until this long before it expires, so a request never carries an expired one.
const MAX_USABLE_MARGIN: Duration = Duration::from_secs(60);
/// After a failed acquisition with no usable token, callers within this window get
/// the same error instead of queueing another attempt against a dead endpoint.
const FAILURE_HOLD: Duration = Duration::from_secs(1);
/// After a failed early refresh, while the current token is still usable, wait this
/// long before trying again (no caller is failing meanwhile).
const REFRESH_RETRY_HOLD: Duration = Duration::from_secs(5);
/// The longest Microsoft Entra ID or IMDS may take to hand out a token, retries included
/// (a hung TLS handshake costs the 5 s connect timeout per attempt).
const HTTP_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(8);
/// The longest `az`/`azd` may take (the Azure SDKs' usual CLI timeout: a cold `az` is slow).
const CLI_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// The name used when every developer tool failed.
const DEVELOPER_TOOLS: &str = "DeveloperToolsCredential";

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

impl Source {
    fn timeout(&self) -> Duration {
        match self.name {
            "AzureCliCredential" | "AzureDeveloperCliCredential" => CLI_ACQUIRE_TIMEOUT,
            _ => HTTP_ACQUIRE_TIMEOUT,
        }
    }
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
        // The SDK's default retries for a minute; a dead endpoint must fail in seconds:
        // two retries, about 0.4 s and 0.8 s apart, then the error.
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
        // The SDK joins `/{tenant}/oauth2/v2.0/token` onto the host, so it gets the host without the slash.
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
        state: std::sync::Mutex::new(CacheState::default()),
        acquisition: tokio::sync::Mutex::new(()),
        metrics,
    }))
}

/// Why the federated token file gave no assertion. The file's content never appears here.
#[derive(Debug, thiserror::Error)]
enum TokenFileError {
    #[error("the federated token file {} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("the federated token file {} could not be read: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("the federated token file {} is empty", path.display())]
    Empty { path: PathBuf },
}

/// The projected service-account token, re-read on every token exchange so a
/// rotation by the kubelet is seen at once (the SDK's own re-reads every 600 s).
/// An exchange happens once per access-token lifetime, so this costs one small read an hour.
#[derive(Debug)]
struct FederatedTokenFile {
    path: PathBuf,
}

impl FederatedTokenFile {
    async fn read(&self) -> Result<String, TokenFileError> {
        let path = self.path.clone();
        let content = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|err| match err.kind() {
                std::io::ErrorKind::NotFound => TokenFileError::Missing { path: path.clone() },
                _ => TokenFileError::Unreadable {
                    path: path.clone(),
                    reason: io_reason(&err),
                },
            })?;
        let assertion = content.trim();
        if assertion.is_empty() {
            return Err(TokenFileError::Empty { path });
        }
        Ok(assertion.to_owned())
    }
}

#[async_trait::async_trait]
impl ClientAssertion for FederatedTokenFile {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        self.read().await.map_err(|err| {
            let message = err.to_string();
            azure_core::Error::with_error(ErrorKind::Credential, err, message)
        })
    }
}

/// An I/O error's reason without its `(os error N)` suffix.
fn io_reason(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// A token in the cache, with the two instants that drive its refresh.
struct Cached {
    token: BearerToken,
    /// From here on the next caller refreshes it.
    refresh_at: OffsetDateTime,
    /// Until here it is still handed out while a refresh runs or fails.
    usable_until: OffsetDateTime,
}

impl Cached {
    /// `started` and `received` bound the acquisition. The SDK counts `expires_in` from when the
    /// answer arrived, but Microsoft Entra ID counts it from when it issued the token, somewhere in
    /// between: the cache counts as if it was issued when the request started, to be safe.
    fn new(token: BearerToken, started: OffsetDateTime, received: OffsetDateTime) -> Self {
        let took = (received - started).max(time::Duration::ZERO);
        let expires = token.expires_on - took;
        let lifetime = (expires - started).max(time::Duration::ZERO);
        let margin = |fraction: i32, max: Duration| {
            std::cmp::min(
                lifetime / fraction,
                time::Duration::try_from(max).unwrap_or(time::Duration::ZERO),
            )
        };
        Self {
            refresh_at: expires - margin(4, MAX_REFRESH_MARGIN),
            usable_until: expires - margin(8, MAX_USABLE_MARGIN),
            token,
        }
    }
}

#[derive(Default)]
struct CacheState {
    token: Option<Cached>,
    last_failure: Option<(tokio::time::Instant, TokenError)>,
}

/// The one token cache in front of the chain.
///
/// A fresh token is read without waiting. When a refresh is due, one caller runs
/// it (holding `acquisition`); meanwhile the others keep using the current token
/// while it is still usable, or, with none usable, wait for that one acquisition
/// and share its result, success or failure.
pub struct SharedTokenCache {
    scope: String,
    sources: Vec<Source>,
    sticky: AtomicUsize,
    state: std::sync::Mutex<CacheState>,
    acquisition: tokio::sync::Mutex<()>,
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

    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached token if fresh (`Ok`), else the still-usable one, if any (`Err`).
    fn cached(&self, now: OffsetDateTime) -> Result<BearerToken, Option<BearerToken>> {
        match &self.state().token {
            Some(cached) if now < cached.refresh_at => Ok(cached.token.clone()),
            Some(cached) if now < cached.usable_until => Err(Some(cached.token.clone())),
            _ => Err(None),
        }
    }

    /// Runs by the one caller holding the acquisition lock.
    async fn refresh(&self) -> Result<BearerToken, TokenError> {
        let usable = match self.cached(OffsetDateTime::now_utc()) {
            // Another caller refreshed it while this one waited for the lock.
            Ok(token) => return Ok(token),
            Err(usable) => usable,
        };
        if let Some((at, err)) = &self.state().last_failure {
            let hold = if usable.is_some() {
                REFRESH_RETRY_HOLD
            } else {
                FAILURE_HOLD
            };
            if at.elapsed() < hold {
                return usable.ok_or_else(|| err.clone());
            }
        }
        let started = OffsetDateTime::now_utc();
        let result = self.acquire().await;
        let mut state = self.state();
        match result {
            Ok(token) => {
                state.token = Some(Cached::new(token.clone(), started, OffsetDateTime::now_utc()));
                state.last_failure = None;
                Ok(token)
            }
            Err(err) => {
                state.last_failure = Some((tokio::time::Instant::now(), err.clone()));
                let now = OffsetDateTime::now_utc();
                match &state.token {
                    Some(cached) if now < cached.usable_until => {
                        tracing::warn!(
                            credential = err.credential,
                            expires_on = %cached.token.expires_on,
                            "refreshing the token failed; the current one serves until it is about to expire"
                        );
                        Ok(cached.token.clone())
                    }
                    _ => {
                        state.token = None;
                        Err(err)
                    }
                }
            }
        }
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
            let attempt = tokio::time::timeout(
                source.timeout(),
                source
                    .credential
                    .get_token(&[&self.scope], Some(TokenRequestOptions::default())),
            )
            .await;
            let message = match attempt {
                Ok(Ok(AccessToken { token, expires_on, .. })) => {
                    self.sticky.store(index, Ordering::Relaxed);
                    self.metrics.token(source.name, "success");
                    tracing::info!(credential = source.name, expires_on = %expires_on, "acquired a Microsoft Entra token");
                    return Ok(BearerToken {
                        secret: SecretString::from(token.secret().to_owned()),
                        expires_on,
                        credential: source.name,
                    });
                }
                Ok(Err(err)) => explain(source.name, &source.hints, &self.scope, &err),
                Err(_) => timed_out(source.name, &source.hints, source.timeout()),
            };
            self.metrics.token(source.name, "failure");
            // Only our sentence is logged: the SDK's text may quote a CLI's output.
            tracing::warn!(credential = source.name, error = %message, "token acquisition failed");
            failures.push(TokenError {
                credential: source.name,
                message,
            });
        }
        if failures.len() == 1 {
            return Err(failures.remove(0));
        }
        Err(TokenError {
            credential: DEVELOPER_TOOLS,
            message: format!(
                "No developer credential could get a Microsoft Entra token. {}",
                failures
                    .iter()
                    .map(|f| f.message.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        })
    }
}

#[async_trait::async_trait]
impl TokenProvider for SharedTokenCache {
    async fn token(&self) -> Result<BearerToken, TokenError> {
        let usable = match self.cached(OffsetDateTime::now_utc()) {
            Ok(token) => return Ok(token),
            Err(usable) => usable,
        };
        // A refresh is due: one caller runs it; with a usable token the others do not wait.
        let _guard = match (self.acquisition.try_lock(), usable) {
            (Ok(guard), _) => guard,
            (Err(_), Some(token)) => return Ok(token),
            (Err(_), None) => self.acquisition.lock().await,
        };
        self.refresh().await
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

/// Every error in the chain, outermost first.
fn chain(err: &azure_core::Error) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err as &(dyn std::error::Error + 'static)), |e| e.source())
}

/// The token file's own error, when reading it failed.
fn token_file_error(err: &azure_core::Error) -> Option<&TokenFileError> {
    chain(err).find_map(|e| e.downcast_ref::<TokenFileError>())
}

/// Status and error codes of Microsoft Entra ID's error answer, when it answered one.
fn entra_answer(err: &azure_core::Error) -> Option<(u16, String)> {
    chain(err).find_map(|e| match e.downcast_ref::<azure_core::Error>()?.kind() {
        ErrorKind::HttpResponse { status, error_code, .. } => {
            Some((u16::from(*status), error_code.clone().unwrap_or_default()))
        }
        _ => None,
    })
}

fn is_transport(err: &azure_core::Error) -> bool {
    chain(err).any(|e| {
        if let Some(azure) = e.downcast_ref::<azure_core::Error>() {
            if matches!(azure.kind(), ErrorKind::Io | ErrorKind::Connection) {
                return true;
            }
        }
        matches!(e.downcast_ref::<reqwest::Error>(), Some(r) if r.is_connect() || r.is_timeout() || r.is_request())
    })
}

/// A few words on why a connection failed, from the error chain's text, and what to check.
fn transport_reason(text: &str) -> (&'static str, &'static str) {
    let lower = text.to_ascii_lowercase();
    let network = "Check the pod's DNS and egress to the authority host (AZURE_AUTHORITY_HOST).";
    if lower.contains("certificate") || lower.contains("unknownissuer") || lower.contains("tls") {
        (
            "the TLS handshake failed: the server's certificate is not trusted",
            "Check AZURE_AUTHORITY_HOST, any TLS-inspecting proxy on the way, and the CA roots this process trusts \
             (SSL_CERT_FILE).",
        )
    } else if lower.contains("dns") || lower.contains("lookup") || lower.contains("name or service not known") {
        ("the host name did not resolve", network)
    } else if lower.contains("refused") {
        ("the connection was refused", network)
    } else if lower.contains("timed out") || lower.contains("timeout") {
        ("the connection timed out", network)
    } else {
        ("the connection failed", network)
    }
}

/// The sentence for a credential that did not answer within its timeout.
fn timed_out(credential: &'static str, hints: &Hints, timeout: Duration) -> String {
    let seconds = timeout.as_secs();
    match credential {
        "WorkloadIdentityCredential" => format!(
            "Workload identity: {} did not answer with a token within {seconds} s. \
             Check the pod's DNS and egress to the authority host (AZURE_AUTHORITY_HOST).",
            hints.authority.as_deref().unwrap_or("Microsoft Entra ID")
        ),
        "AzureCliCredential" => format!(
            "Azure CLI: `az account get-access-token` did not finish within {seconds} s. \
             Run it yourself to see why, then `az login` if needed."
        ),
        "AzureDeveloperCliCredential" => {
            format!("Azure Developer CLI: `azd auth token` did not finish within {seconds} s; run `azd auth login`.")
        }
        _ => format!(
            "Managed identity: the instance metadata endpoint (IMDS) did not answer within {seconds} s. \
             Check that this machine has a managed identity (AZURE_USE_MANAGED_IDENTITY is set)."
        ),
    }
}

/// A sentence for a person: which credential failed, why, and what to check.
///
/// Built only from our own words, the settings and Microsoft Entra ID's error codes:
/// never from a token, an assertion or a tool's raw output.
fn explain(credential: &'static str, hints: &Hints, scope: &str, err: &azure_core::Error) -> String {
    let text = chain_text(err);
    let has = |needle: &str| text.contains(needle);
    match credential {
        "WorkloadIdentityCredential" => explain_workload_identity(hints, scope, err, &text),
        "AzureCliCredential" => {
            let tenant = hints
                .tenant_id
                .as_deref()
                .map(|t| format!(" --tenant {t}"))
                .unwrap_or_default();
            if has("not found on PATH") || has("wasn't found on PATH") || has("command not found") {
                "Azure CLI: `az` was not found on PATH. Install the Azure CLI and run `az login`, \
                 or run the service on AKS with workload identity."
                    .to_owned()
            } else if has("az login") || has("AADSTS") || has("expired") {
                format!(
                    "Azure CLI: not logged in, or the login has expired. Run `az login{tenant}` and try again \
                     (the service picks the new login up by itself)."
                )
            } else {
                format!(
                    "Azure CLI: `az account get-access-token` failed. Run `az account get-access-token --scope {scope}{tenant}` \
                     yourself to see why, then `az login{tenant}` if needed."
                )
            }
        }
        "AzureDeveloperCliCredential" => {
            if has("not found on PATH") || has("wasn't found on PATH") || has("command not found") {
                "Azure Developer CLI: `azd` was not found on PATH.".to_owned()
            } else {
                "Azure Developer CLI: `azd auth token` failed; run `azd auth login`.".to_owned()
            }
        }
        _ => {
            let client_id = hints.client_id.as_deref().unwrap_or("<system-assigned>");
            if is_transport(err) {
                format!(
                    "Managed identity: the instance metadata endpoint (IMDS) could not be reached ({}). \
                     Managed identity works only on an Azure VM or node; unset AZURE_USE_MANAGED_IDENTITY elsewhere.",
                    transport_reason(&text).0
                )
            } else {
                format!(
                    "Managed identity: no token for identity {client_id}. Check the identity is assigned to the node or VM \
                     (AZURE_USE_MANAGED_IDENTITY is set) and AZURE_CLIENT_ID names a user-assigned identity."
                )
            }
        }
    }
}

fn explain_workload_identity(hints: &Hints, scope: &str, err: &azure_core::Error, text: &str) -> String {
    let client_id = hints.client_id.as_deref().unwrap_or("<unset>");
    let tenant_id = hints.tenant_id.as_deref().unwrap_or("<unset>");
    let token_file = hints
        .token_file
        .as_deref()
        .map(Path::display)
        .map(|p| p.to_string())
        .unwrap_or_default();
    let authority = hints.authority.as_deref().unwrap_or("Microsoft Entra ID");
    let webhook = "Check that the pod has the label azure.workload.identity/use: \"true\" and runs with the \
                   ServiceAccount annotated azure.workload.identity/client-id, so the webhook mounts the token.";
    if let Some(file) = token_file_error(err) {
        return match file {
            TokenFileError::Missing { path } => format!(
                "Workload identity: the federated token file {} (AZURE_FEDERATED_TOKEN_FILE) does not exist. {webhook}",
                path.display()
            ),
            TokenFileError::Unreadable { path, reason } => format!(
                "Workload identity: the federated token file {} (AZURE_FEDERATED_TOKEN_FILE) could not be read ({reason}). \
                 Check that the variable names the projected service account token (a file the webhook mounts) and \
                 that the container's user may read it.",
                path.display()
            ),
            TokenFileError::Empty { path } => format!(
                "Workload identity: the federated token file {} (AZURE_FEDERATED_TOKEN_FILE) is empty. {webhook}",
                path.display()
            ),
        };
    }
    let answer = entra_answer(err);
    let code = |number: &str| {
        mentions_code(text, number)
            || answer
                .as_ref()
                .is_some_and(|(_, codes)| codes.split(',').any(|c| c.trim() == number))
    };
    if code("700016") {
        format!(
            "Workload identity: Microsoft Entra ID does not know the application {client_id} in tenant {tenant_id} \
             (AADSTS700016). Check AZURE_CLIENT_ID: the ServiceAccount annotation azure.workload.identity/client-id \
             must hold the managed identity's clientId, and AZURE_TENANT_ID its tenant."
        )
    } else if code("70021") || code("700213") {
        // 700213 is the same mismatch, reported for the subject.
        let number = if code("70021") { "70021" } else { "700213" };
        format!(
            "Workload identity: no federated credential of identity {client_id} matches this pod's service account \
             token (AADSTS{number}). Check the federated credential: its issuer must be the cluster's OIDC issuer URL \
             (az aks show --query oidcIssuerProfile.issuerUrl), its subject \
             system:serviceaccount:<namespace>:<service account>, and its audience api://AzureADTokenExchange."
        )
    } else if code("700024") {
        format!(
            "Workload identity: the service account token in {token_file} is outside its valid time range \
             (AADSTS700024): it has expired or is not yet valid. The kubelet rotates it about hourly; check that \
             the projected token volume is mounted and refreshed, and that the node's clock is right."
        )
    } else if code("90002") || code("900023") {
        format!("Workload identity: tenant {tenant_id} was not found (AZURE_TENANT_ID). Check the tenant id.")
    } else if let Some((status, _)) = answer {
        let aadsts = aadsts_code(text);
        if aadsts.is_some() || text.contains("invalid_client") {
            format!(
                "Workload identity: Microsoft Entra ID rejected identity {client_id} ({}, HTTP {status}). \
                 Check the managed identity, its federated credential and the ServiceAccount annotation.",
                aadsts.unwrap_or_else(|| "invalid_client".to_owned())
            )
        } else {
            format!(
                "Workload identity: the token endpoint {authority}/{tenant_id}/oauth2/v2.0/token answered HTTP {status}. \
                 Check AZURE_AUTHORITY_HOST and AZURE_TENANT_ID; if they are right, Microsoft Entra ID may be \
                 unavailable, and the service retries by itself."
            )
        }
    } else if is_transport(err) {
        let (reason, advice) = transport_reason(text);
        format!("Workload identity: could not reach {authority} to get a token ({reason}). {advice}")
    } else {
        format!(
            "Workload identity: the token endpoint {authority}/{tenant_id}/oauth2/v2.0/token gave no usable token \
             for {scope}. Check AZURE_AUTHORITY_HOST, AZURE_TENANT_ID and AZURE_TOKEN_SCOPE."
        )
    }
}

/// Whether `text` names `AADSTS{number}` exactly (AADSTS70021 is not AADSTS700213).
fn mentions_code(text: &str, number: &str) -> bool {
    let needle = format!("AADSTS{number}");
    text.match_indices(&needle)
        .any(|(at, _)| !text[at + needle.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

fn aadsts_code(text: &str) -> Option<String> {
    let start = text.find("AADSTS")?;
    let digits: String = text[start + 6..].chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    Some(format!("AADSTS{digits}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_exactly() {
        assert!(mentions_code(
            "AADSTS70021: No matching federated identity record",
            "70021"
        ));
        assert!(!mentions_code(
            "AADSTS700213: No matching federated identity record",
            "70021"
        ));
        assert!(mentions_code("AADSTS700213: x; AADSTS70021: y", "70021"));
    }

    #[test]
    fn aadsts_codes_are_extracted() {
        assert_eq!(
            aadsts_code("x: AADSTS700213: No matching").as_deref(),
            Some("AADSTS700213")
        );
        assert_eq!(aadsts_code("nothing"), None);
        assert_eq!(aadsts_code("AADSTS"), None);
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

    fn token_expiring_in(seconds: i64, now: OffsetDateTime) -> BearerToken {
        BearerToken {
            secret: SecretString::from("t".to_owned()),
            expires_on: now + time::Duration::seconds(seconds),
            credential: "x",
        }
    }

    #[test]
    fn an_hour_long_token_is_refreshed_five_minutes_early_and_used_until_a_minute_before_expiry() {
        let now = OffsetDateTime::now_utc();
        let cached = Cached::new(token_expiring_in(3600, now), now, now);
        assert_eq!(cached.refresh_at, now + time::Duration::seconds(3300));
        assert_eq!(cached.usable_until, now + time::Duration::seconds(3540));
    }

    #[test]
    fn a_short_token_is_refreshed_after_three_quarters_of_its_life() {
        let now = OffsetDateTime::now_utc();
        let cached = Cached::new(token_expiring_in(2, now), now, now);
        assert_eq!(cached.refresh_at, now + time::Duration::milliseconds(1500));
        assert_eq!(cached.usable_until, now + time::Duration::milliseconds(1750));
    }

    #[test]
    fn a_slow_acquisition_counts_the_lifetime_from_when_the_request_started() {
        let started = OffsetDateTime::now_utc();
        let received = started + time::Duration::milliseconds(400);
        // The SDK adds expires_in (2 s) to the time the answer arrived.
        let token = token_expiring_in(2, received);
        let cached = Cached::new(token, started, received);
        assert_eq!(cached.refresh_at, started + time::Duration::milliseconds(1500));
        assert_eq!(cached.usable_until, started + time::Duration::milliseconds(1750));
    }

    #[test]
    fn io_reasons_drop_the_os_error_number() {
        let err = std::io::Error::from_raw_os_error(21);
        assert_eq!(io_reason(&err), "Is a directory");
    }
}
