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
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
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

/// A bearer token for Azure OpenAI; cheap to clone (every attempt takes one).
#[derive(Clone)]
pub struct BearerToken {
    secret: Arc<SecretString>,
    /// `Bearer <token>`, made once: a JWT is kilobytes, copied and checked per request otherwise.
    authorization: Option<reqwest::header::HeaderValue>,
    /// When it expires.
    pub expires_on: OffsetDateTime,
    /// Which credential produced it.
    pub credential: &'static str,
}

impl BearerToken {
    /// A token from `credential`, valid until `expires_on`.
    pub fn new(secret: SecretString, expires_on: OffsetDateTime, credential: &'static str) -> Self {
        let authorization = reqwest::header::HeaderValue::try_from(format!("Bearer {}", secret.expose_secret()))
            .ok()
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        Self {
            secret: Arc::new(secret),
            authorization,
            expires_on,
            credential,
        }
    }

    /// The token; never logged.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// The `Authorization` header's value (marked sensitive); `None` for a token no header
    /// can carry, which the request then reports.
    pub fn authorization(&self) -> Option<reqwest::header::HeaderValue> {
        self.authorization.clone()
    }
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

/// The credentials the chain is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// The AKS workload identity: the projected token exchanged at Microsoft Entra ID.
    WorkloadIdentity,
    /// The node's or VM's managed identity (IMDS), only on opt-in.
    ManagedIdentity,
    /// The developer's `az login`.
    AzureCli,
    /// The developer's `azd auth login`.
    AzureDeveloperCli,
}

impl CredentialKind {
    /// The SDK's name of the credential: logs, metrics and `check`.
    pub fn name(self) -> &'static str {
        match self {
            CredentialKind::WorkloadIdentity => "WorkloadIdentityCredential",
            CredentialKind::ManagedIdentity => "ManagedIdentityCredential",
            CredentialKind::AzureCli => "AzureCliCredential",
            CredentialKind::AzureDeveloperCli => "AzureDeveloperCliCredential",
        }
    }

    /// How long one acquisition may take: a process start for the CLIs, one HTTPS call otherwise.
    fn timeout(self) -> Duration {
        match self {
            CredentialKind::AzureCli | CredentialKind::AzureDeveloperCli => CLI_ACQUIRE_TIMEOUT,
            CredentialKind::WorkloadIdentity | CredentialKind::ManagedIdentity => HTTP_ACQUIRE_TIMEOUT,
        }
    }
}

/// One source of tokens in the chain, with what a person needs to fix it.
struct Source {
    kind: CredentialKind,
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
            kind: CredentialKind::WorkloadIdentity,
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
            kind: CredentialKind::ManagedIdentity,
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
            kind: CredentialKind::AzureCli,
            credential: cli,
            hints: hints.clone(),
        });
        sources.push(Source {
            kind: CredentialKind::AzureDeveloperCli,
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

/// The audience Microsoft Entra ID requires on a federated service account token.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The end of the path where Kubernetes mounts a pod's own service account token.
const POD_SERVICE_ACCOUNT_TOKEN: &str = "kubernetes.io/serviceaccount/token";
/// The restart that gives running pods a fixed pod spec or ServiceAccount.
const RESTART: &str = "kubectl rollout restart deployment/ai-service";

/// A JWT's payload, decoded without verifying anything: to show whom a token is for,
/// never to trust it. `None` when `token` is not a JWT. The token itself is not kept.
pub fn unverified_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut parts = token.trim().split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(claims) => Some(claims),
        _ => None,
    }
}

/// A string claim, or each string of an array claim (`aud` may be either).
pub fn claim_strings(claims: &serde_json::Map<String, serde_json::Value>, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        Some(serde_json::Value::Array(many)) => many.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

fn claim_time(claims: &serde_json::Map<String, serde_json::Value>, name: &str) -> Option<OffsetDateTime> {
    let seconds = claims.get(name)?.as_f64()?;
    OffsetDateTime::from_unix_timestamp(seconds as i64).ok()
}

/// What Microsoft Entra ID compares with a federated credential, read from the
/// service account token: its issuer, subject, audiences and validity. Never the token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssertionClaims {
    /// `iss`: the cluster's OIDC issuer URL.
    pub issuer: Option<String>,
    /// `sub`: `system:serviceaccount:<namespace>:<name>`.
    pub subject: Option<String>,
    /// `aud`: must hold [`TOKEN_EXCHANGE_AUDIENCE`].
    pub audiences: Vec<String>,
    /// `exp`.
    pub expires: Option<OffsetDateTime>,
    /// `iat`.
    pub issued: Option<OffsetDateTime>,
}

impl AssertionClaims {
    /// The claims of a JWT, decoded without verification; `None` when it is not a JWT.
    pub fn from_jwt(token: &str) -> Option<Self> {
        let claims = unverified_claims(token)?;
        Some(Self {
            issuer: claim_strings(&claims, "iss").into_iter().next(),
            subject: claim_strings(&claims, "sub").into_iter().next(),
            audiences: claim_strings(&claims, "aud"),
            expires: claim_time(&claims, "exp"),
            issued: claim_time(&claims, "iat"),
        })
    }

    /// The claims of the token in `path`, when it can be read and is a JWT.
    pub fn read(path: &Path) -> Option<Self> {
        Self::from_jwt(&std::fs::read_to_string(path).ok()?)
    }

    /// The audiences as written in a sentence.
    pub fn audience_text(&self) -> String {
        if self.audiences.is_empty() {
            "none".to_owned()
        } else {
            self.audiences.join(", ")
        }
    }

    /// Whether the audience is one a Kubernetes API server accepts (a pod's own token), not Entra's.
    fn is_for_the_api_server(&self) -> bool {
        self.audiences.iter().any(|aud| {
            aud.contains("kubernetes.default.svc")
                || aud.trim_matches('"').ends_with(".azmk8s.io")
                || self.issuer.as_deref() == Some(aud.as_str())
        })
    }
}

/// Why a federated token file would be refused, found before asking Microsoft Entra ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionProblem {
    /// The file does not hold a JWT at all.
    NotAJwt,
    /// It is the pod's own service account token, meant for the API server.
    PodServiceAccountToken,
    /// Its audience is not [`TOKEN_EXCHANGE_AUDIENCE`].
    WrongAudience,
    /// It has expired.
    Expired,
}

/// What is wrong with the token in `token_file` (with `claims`, `None` when it is not a JWT), if anything.
pub fn assertion_problem(
    token_file: &Path,
    claims: Option<&AssertionClaims>,
    now: OffsetDateTime,
) -> Option<AssertionProblem> {
    let pod_token_path = token_file.to_string_lossy().ends_with(POD_SERVICE_ACCOUNT_TOKEN);
    let Some(claims) = claims else {
        return Some(if pod_token_path {
            AssertionProblem::PodServiceAccountToken
        } else {
            AssertionProblem::NotAJwt
        });
    };
    let exchange = claims.audiences.iter().any(|aud| aud == TOKEN_EXCHANGE_AUDIENCE);
    if pod_token_path || (!exchange && claims.is_for_the_api_server()) {
        Some(AssertionProblem::PodServiceAccountToken)
    } else if !exchange {
        Some(AssertionProblem::WrongAudience)
    } else if claims.expires.is_some_and(|exp| exp <= now) {
        Some(AssertionProblem::Expired)
    } else {
        None
    }
}

/// The sentence for a federated token that Microsoft Entra ID refuses or would refuse.
pub fn explain_assertion(
    problem: AssertionProblem,
    token_file: &Path,
    claims: Option<&AssertionClaims>,
    now: OffsetDateTime,
) -> String {
    let file = token_file.display();
    let audience = claims.map_or_else(|| "unknown".to_owned(), AssertionClaims::audience_text);
    match problem {
        AssertionProblem::NotAJwt => format!(
            "Workload identity: {file} (AZURE_FEDERATED_TOKEN_FILE) does not hold a JSON Web Token, so Microsoft \
             Entra ID would refuse it. Let the workload identity webhook set AZURE_FEDERATED_TOKEN_FILE (remove it \
             from the manifest): it names the service account token it projects."
        ),
        AssertionProblem::PodServiceAccountToken => format!(
            "Workload identity: AZURE_FEDERATED_TOKEN_FILE names {file}, the pod's own service account token \
             (audience {audience}, the Kubernetes API server), which Microsoft Entra ID refuses (AADSTS70023). \
             Let the workload identity webhook set AZURE_FEDERATED_TOKEN_FILE (remove it from the manifest): it \
             names the token it projects with the audience {TOKEN_EXCHANGE_AUDIENCE}."
        ),
        AssertionProblem::WrongAudience => format!(
            "Workload identity: the service account token in {file} has the audience {audience}, not \
             {TOKEN_EXCHANGE_AUDIENCE}, so Microsoft Entra ID would refuse it. The workload identity webhook \
             projects the token with that audience; a projected volume made by hand must set \
             `audience: {TOKEN_EXCHANGE_AUDIENCE}` on its serviceAccountToken source."
        ),
        AssertionProblem::Expired => {
            let when = match claims.and_then(|c| c.expires) {
                Some(exp) if exp <= now => format!(
                    "it expired at {} ({} ago)",
                    azure_core::time::to_rfc3339(&exp),
                    minutes(now - exp)
                ),
                _ => "it has expired or is not yet valid".to_owned(),
            };
            format!(
                "Workload identity: the service account token in {file} is outside its valid time range ({when}), \
                 so Microsoft Entra ID refuses it (AADSTS700024): the kubelet stopped rotating it, or \
                 AZURE_FEDERATED_TOKEN_FILE names the wrong file. Let the webhook set AZURE_FEDERATED_TOKEN_FILE to \
                 the token it projects (the kubelet renews that one well before it expires), check the node's clock, \
                 and restart the pod: {RESTART}."
            )
        }
    }
}

fn minutes(duration: time::Duration) -> String {
    match duration.whole_minutes() {
        0 => format!("{} s", duration.whole_seconds().max(0)),
        m => format!("{m} min"),
    }
}

/// The sentence for Microsoft Entra ID finding no federated credential of `client_id` that matches
/// the token (`AADSTS{code}`), with the `az` command that would create one from the token's claims.
pub fn explain_no_federated_credential(code: &str, client_id: &str, claims: Option<&AssertionClaims>) -> String {
    let differs = match code {
        "700211" => ": the issuer differs",
        "700212" => ": the audience differs",
        "700213" => ": the subject differs",
        _ => "",
    };
    let issuer = claims.and_then(|c| c.issuer.clone());
    let subject = claims.and_then(|c| c.subject.clone());
    let presented = match (&issuer, &subject) {
        (Some(iss), Some(sub)) => format!(", and this token has issuer {iss} and subject {sub}"),
        (Some(iss), None) => format!(", and this token has issuer {iss} and no subject"),
        (None, Some(sub)) => format!(", and this token has subject {sub} and no issuer"),
        (None, None) => String::new(),
    };
    let issuer = issuer.unwrap_or_else(|| {
        "\"$(az aks show --name <cluster> --resource-group <cluster resource group> --query \
         oidcIssuerProfile.issuerUrl -o tsv)\""
            .to_owned()
    });
    let subject = subject.unwrap_or_else(|| "system:serviceaccount:<namespace>:<service account>".to_owned());
    format!(
        "Workload identity: no federated credential of identity {client_id} matches this pod's service account \
         token (AADSTS{code}{differs}): a federated credential's issuer must be the cluster's OIDC issuer URL, its \
         subject system:serviceaccount:<namespace>:<service account> and its audience {TOKEN_EXCHANGE_AUDIENCE}\
         {presented}. Create the one that matches on the managed identity whose clientId is {client_id}: \
         az identity federated-credential create --name <name> --identity-name <identity> --resource-group \
         <identity resource group> --issuer {issuer} --subject {subject} --audience {TOKEN_EXCHANGE_AUDIENCE}"
    )
}

/// Which workload identity variables a pod lacks, when it should have them (USE_AZURE_AD=True in Kubernetes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingWorkloadIdentity {
    /// `AZURE_FEDERATED_TOKEN_FILE` is unset: the webhook did not mutate the pod.
    pub token_file: bool,
    /// `AZURE_CLIENT_ID` is unset: nothing gave the identity's client id.
    pub client_id: bool,
    /// `AZURE_TENANT_ID` is unset.
    pub tenant_id: bool,
}

impl MissingWorkloadIdentity {
    /// `None` when nothing is missing.
    pub fn new(token_file: bool, client_id: bool, tenant_id: bool) -> Option<Self> {
        (token_file || client_id || tenant_id).then_some(Self {
            token_file,
            client_id,
            tenant_id,
        })
    }
}

/// The sentence for a pod without the workload identity variables: which of the pod label and the
/// ServiceAccount annotation to check, from which variables are missing, and the restart it needs.
pub fn explain_missing_workload_identity(missing: MissingWorkloadIdentity) -> String {
    let names: Vec<&str> = [
        (missing.token_file, "AZURE_FEDERATED_TOKEN_FILE"),
        (missing.client_id, "AZURE_CLIENT_ID"),
        (missing.tenant_id, "AZURE_TENANT_ID"),
    ]
    .into_iter()
    .filter_map(|(absent, name)| absent.then_some(name))
    .collect();
    let names = match names.as_slice() {
        [one] => (*one).to_owned(),
        [first, second] => format!("{first} or {second}"),
        _ => names.join(", "),
    };
    let label = "the label azure.workload.identity/use: \"true\" on the Deployment's pod template \
                 (spec.template.metadata.labels, not only the Deployment's own labels)";
    let annotation = "the annotation azure.workload.identity/client-id: <the managed identity's clientId> on the \
                      pod's ServiceAccount";
    let restart = format!("pods created before the fix keep their old spec, so restart them: {RESTART}");
    match (missing.token_file, missing.client_id) {
        // The webhook did not run; AZURE_CLIENT_ID set by hand makes the annotation unnecessary.
        (true, false) => format!(
            "Workload identity: this pod runs in Kubernetes with USE_AZURE_AD=True but has no {names}: the workload \
             identity webhook did not mutate it. Check {label}; {restart}."
        ),
        // The webhook ran (it set the token file) but found no client id on the ServiceAccount.
        (false, true) => format!(
            "Workload identity: the workload identity webhook mutated this pod but set no {names}: its ServiceAccount \
             lacks the annotation. Check {annotation}; {restart}."
        ),
        // Nothing came from the webhook: the label is missing, and the annotation cannot be told from here.
        (true, true) => format!(
            "Workload identity: this pod runs in Kubernetes with USE_AZURE_AD=True but has no {names}: the workload \
             identity webhook did not mutate it. Check both {label} and {annotation}; {restart}."
        ),
        (false, false) => format!(
            "Workload identity: the workload identity webhook mutated this pod but set no {names}: the cluster's \
             webhook has no tenant configured. Check the annotation azure.workload.identity/tenant-id on the pod's \
             ServiceAccount; {restart}."
        ),
    }
}

/// Whether `endpoint` is a regional Cognitive Services endpoint rather than a resource's custom subdomain.
pub fn is_regional_endpoint(endpoint: &url::Url) -> bool {
    endpoint
        .host_str()
        .is_some_and(|host| host.to_ascii_lowercase().ends_with(".api.cognitive.microsoft.com"))
}

/// The sentence for a regional endpoint (`variable` is its setting) used with Microsoft Entra auth.
pub fn explain_regional_endpoint(variable: &str, endpoint: &url::Url) -> String {
    format!(
        "{variable} is {endpoint}, a regional endpoint, and Microsoft Entra authentication works only with the \
         resource's custom subdomain. Set {variable} to the resource's own endpoint, \
         https://<resource name>.openai.azure.com/ (az cognitiveservices account show --name <resource name> \
         --resource-group <resource group> --query properties.endpoint -o tsv)."
    )
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
        self.sources.iter().map(|s| s.kind.name()).collect()
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
            // A fetch that reaches Entra (or the CLI) is a span of its own; a cached token is not.
            let span = tracing::debug_span!(
                "acquire token",
                otel.name = %format_args!("acquire_token {}", source.kind.name()),
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                azure.credential = source.kind.name(),
                error.type = tracing::field::Empty,
            );
            let attempt = tracing::Instrument::instrument(
                tokio::time::timeout(
                    source.kind.timeout(),
                    source
                        .credential
                        .get_token(&[&self.scope], Some(TokenRequestOptions::default())),
                ),
                span.clone(),
            )
            .await;
            match &attempt {
                Ok(Ok(_)) => span.record("otel.status_code", "OK"),
                Ok(Err(_)) => span
                    .record("error.type", "token_refused")
                    .record("otel.status_code", "ERROR"),
                Err(_) => span.record("error.type", "timeout").record("otel.status_code", "ERROR"),
            };
            let message = match attempt {
                Ok(Ok(AccessToken { token, expires_on, .. })) => {
                    self.sticky.store(index, Ordering::Relaxed);
                    self.metrics.token(source.kind.name(), "success");
                    tracing::info!(credential = source.kind.name(), expires_on = %expires_on, "acquired a Microsoft Entra token");
                    return Ok(BearerToken::new(
                        SecretString::from(token.secret().to_owned()),
                        expires_on,
                        source.kind.name(),
                    ));
                }
                Ok(Err(err)) => explain(source.kind, &source.hints, &self.scope, &err),
                Err(_) => timed_out(source.kind, &source.hints, source.kind.timeout()),
            };
            self.metrics.token(source.kind.name(), "failure");
            // Only our sentence is logged: the SDK's text may quote a CLI's output.
            tracing::warn!(credential = source.kind.name(), error = %message, "token acquisition failed");
            failures.push(TokenError {
                credential: source.kind.name(),
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
fn timed_out(credential: CredentialKind, hints: &Hints, timeout: Duration) -> String {
    let seconds = timeout.as_secs();
    match credential {
        CredentialKind::WorkloadIdentity => format!(
            "Workload identity: {} did not answer with a token within {seconds} s. \
             Check the pod's DNS and egress to the authority host (AZURE_AUTHORITY_HOST).",
            hints.authority.as_deref().unwrap_or("Microsoft Entra ID")
        ),
        CredentialKind::AzureCli => format!(
            "Azure CLI: `az account get-access-token` did not finish within {seconds} s. \
             Run it yourself to see why, then `az login` if needed."
        ),
        CredentialKind::AzureDeveloperCli => {
            format!("Azure Developer CLI: `azd auth token` did not finish within {seconds} s; run `azd auth login`.")
        }
        CredentialKind::ManagedIdentity => format!(
            "Managed identity: the instance metadata endpoint (IMDS) did not answer within {seconds} s. \
             Check that this machine has a managed identity (AZURE_USE_MANAGED_IDENTITY is set)."
        ),
    }
}

/// A sentence for a person: which credential failed, why, and what to check.
///
/// Built only from our own words, the settings, Microsoft Entra ID's error codes and the
/// service account token's issuer, subject, audience and expiry: never from a token, an
/// assertion, a signature or a tool's raw output.
fn explain(credential: CredentialKind, hints: &Hints, scope: &str, err: &azure_core::Error) -> String {
    let text = chain_text(err);
    let has = |needle: &str| text.contains(needle);
    match credential {
        CredentialKind::WorkloadIdentity => explain_workload_identity(hints, scope, err, &text),
        CredentialKind::AzureCli => {
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
        CredentialKind::AzureDeveloperCli => {
            if has("not found on PATH") || has("wasn't found on PATH") || has("command not found") {
                "Azure Developer CLI: `azd` was not found on PATH.".to_owned()
            } else {
                "Azure Developer CLI: `azd auth token` failed; run `azd auth login`.".to_owned()
            }
        }
        CredentialKind::ManagedIdentity => {
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
    let token_file = hints.token_file.clone().unwrap_or_default();
    // Re-read for its issuer, subject, audience and expiry (not secret) only when a sentence needs them.
    let claims = || AssertionClaims::read(&token_file);
    let now = OffsetDateTime::now_utc();
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
    } else if let Some(number) = ["70021", "700211", "700212", "700213"].into_iter().find(|n| code(n)) {
        // 700211, 700212 and 700213 are the same mismatch, reported for the issuer, audience or subject.
        explain_no_federated_credential(number, client_id, claims().as_ref())
    } else if code("70023") {
        explain_assertion(
            AssertionProblem::PodServiceAccountToken,
            &token_file,
            claims().as_ref(),
            now,
        )
    } else if code("700024") {
        explain_assertion(AssertionProblem::Expired, &token_file, claims().as_ref(), now)
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
        let token = BearerToken::new(
            SecretString::from("eyJ-very-secret".to_owned()),
            OffsetDateTime::now_utc(),
            "x",
        );
        assert!(!format!("{token:?}").contains("very-secret"));
    }

    fn token_expiring_in(seconds: i64, now: OffsetDateTime) -> BearerToken {
        BearerToken::new(
            SecretString::from("t".to_owned()),
            now + time::Duration::seconds(seconds),
            "x",
        )
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

    fn jwt(payload: &str) -> String {
        format!("eyJhbGciOiJSUzI1NiJ9.{}.c2ln", URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn claims_are_decoded_from_the_payload_only() {
        let token = jwt(
            r#"{"iss":"https://oidc/","sub":"system:serviceaccount:a:b","aud":"api://AzureADTokenExchange","exp":1700000000.5}"#,
        );
        let claims = AssertionClaims::from_jwt(&token).unwrap();
        assert_eq!(claims.issuer.as_deref(), Some("https://oidc/"));
        assert_eq!(claims.subject.as_deref(), Some("system:serviceaccount:a:b"));
        assert_eq!(claims.audiences, [TOKEN_EXCHANGE_AUDIENCE]);
        assert_eq!(claims.expires.unwrap().unix_timestamp(), 1_700_000_000);
        assert_eq!(claims.issued, None);
        // Padding, a trailing newline (as in a mounted file) and an array audience are accepted.
        let padded = format!("e30.{}=.c2ln\n", URL_SAFE_NO_PAD.encode(r#"{"aud":["a","b"]}"#));
        assert_eq!(AssertionClaims::from_jwt(&padded).unwrap().audience_text(), "a, b");
    }

    #[test]
    fn what_is_not_a_jwt_has_no_claims() {
        for token in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "e30.!!!.c2ln",
            &jwt("[1]"),
            &jwt("not json"),
        ] {
            assert_eq!(unverified_claims(token), None, "{token}");
        }
    }

    #[test]
    fn assertion_problems_are_found_in_order() {
        let now = OffsetDateTime::now_utc();
        let file = Path::new("/var/run/secrets/azure/tokens/azure-identity-token");
        let good = AssertionClaims {
            issuer: Some("https://oidc/".to_owned()),
            audiences: vec![TOKEN_EXCHANGE_AUDIENCE.to_owned()],
            expires: Some(now + time::Duration::hours(1)),
            ..Default::default()
        };
        assert_eq!(assertion_problem(file, Some(&good), now), None);
        let expired = AssertionClaims {
            expires: Some(now - time::Duration::seconds(1)),
            ..good.clone()
        };
        assert_eq!(
            assertion_problem(file, Some(&expired), now),
            Some(AssertionProblem::Expired)
        );
        let other = AssertionClaims {
            audiences: vec!["https://example.com".to_owned()],
            ..expired.clone()
        };
        assert_eq!(
            assertion_problem(file, Some(&other), now),
            Some(AssertionProblem::WrongAudience)
        );
        let api_server = AssertionClaims {
            audiences: vec!["https://kubernetes.default.svc.cluster.local".to_owned()],
            ..good.clone()
        };
        assert_eq!(
            assertion_problem(file, Some(&api_server), now),
            Some(AssertionProblem::PodServiceAccountToken)
        );
        let pod_token = Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token");
        assert_eq!(
            assertion_problem(pod_token, Some(&good), now),
            Some(AssertionProblem::PodServiceAccountToken)
        );
        assert_eq!(assertion_problem(file, None, now), Some(AssertionProblem::NotAJwt));
    }

    #[test]
    fn missing_variables_name_the_label_the_annotation_or_both() {
        let label = "azure.workload.identity/use";
        let annotation = "azure.workload.identity/client-id";
        let says = |file, client| {
            explain_missing_workload_identity(MissingWorkloadIdentity::new(file, client, false).unwrap())
        };
        let label_only = says(true, false);
        assert!(
            label_only.contains(label) && !label_only.contains(annotation),
            "{label_only}"
        );
        let annotation_only = says(false, true);
        assert!(
            !annotation_only.contains(label) && annotation_only.contains(annotation),
            "{annotation_only}"
        );
        let both = says(true, true);
        assert!(both.contains(label) && both.contains(annotation), "{both}");
        for sentence in [label_only, annotation_only, both] {
            assert!(sentence.contains(RESTART), "{sentence}");
        }
        assert_eq!(MissingWorkloadIdentity::new(false, false, false), None);
    }

    #[test]
    fn only_regional_cognitive_services_hosts_are_regional() {
        let regional = |url: &str| is_regional_endpoint(&url::Url::parse(url).unwrap());
        assert!(regional("https://eastus.api.cognitive.microsoft.com/"));
        assert!(regional("https://EastUS2.API.Cognitive.Microsoft.com"));
        assert!(!regional("https://myaoai.openai.azure.com/"));
        assert!(!regional("https://myaoai.cognitiveservices.azure.com/"));
    }

    #[test]
    fn io_reasons_drop_the_os_error_number() {
        let err = std::io::Error::from_raw_os_error(21);
        assert_eq!(io_reason(&err), "Is a directory");
    }
}
