//! A pool of deployments for one capability, and the routing rules between them
//! (contract, "Model routing"):
//!
//! - **429**: the deployment cools down until the later of its current cooldown and the
//!   answer's `retry-after-ms` / `retry-after` (a default without one); the request moves
//!   at once to the next usable deployment.
//! - **5xx, a refused or dropped connection, an attempt timeout**: the next usable deployment
//!   is tried; consecutive failures open the deployment's circuit for a while, after which
//!   one trial request decides whether it closes.
//! - **401, 403, 404**: in a pool of two or more the deployment is set aside for longer and
//!   the next is tried; if none works the caller gets the cause.
//! - **400** and any other answer: returned at once, never failed over.
//! - **Nothing usable**: when a cooling deployment becomes usable within the request's
//!   budget, wait for it; otherwise answer at once, without any upstream call, with how long
//!   to wait. An open circuit is not waited for: its end is a guess, not a promise.
//!
//! `UPSTREAM_MAX_RETRIES` bounds the attempts of one request across the whole pool; a pool of
//! one retries its deployment with backoff, as a single deployment always did. Every attempt
//! takes its own token (see `transport` for the timeouts).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::{RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use url::Url;

use super::{
    CallContext, ModelRequest, UpstreamError, classify_bad_request,
    genai::{CallKind, Ended, ModelCall},
    transport::{Attempt, UpstreamClient, backoff, spread},
};
use crate::{
    config::Routing,
    credential::TokenProvider,
    metrics::{DeploymentState, GenAiSeriesCache},
};

/// What a pool serves; its name is the `capability` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Descriptions (chat completions).
    Chat,
    /// Images.
    Image,
}

impl Capability {
    /// `chat` or `image`.
    pub fn label(self) -> &'static str {
        match self {
            Capability::Chat => "chat",
            Capability::Image => "image",
        }
    }

    /// The GenAI conventions' `gen_ai.operation.name`: `chat` or `generate_content`.
    pub fn operation(self) -> &'static str {
        match self {
            Capability::Chat => "chat",
            Capability::Image => "generate_content",
        }
    }
}

/// How each request to one target is authenticated.
#[derive(Clone)]
pub enum Auth {
    /// Nothing (a local server in the cluster).
    None,
    /// Azure's `api-key` header.
    ApiKey(SecretString),
    /// The public OpenAI API: a bearer key and an optional organisation.
    OpenAi {
        /// `OPENAI_API_KEY`.
        key: SecretString,
        /// `OPENAI_ORG_ID`.
        organization: Option<String>,
    },
    /// A Microsoft Entra token from the shared cache, taken for every attempt.
    Entra(Arc<dyn TokenProvider>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::ApiKey(_) => "ApiKey(..)",
            Auth::OpenAi { .. } => "OpenAi(..)",
            Auth::Entra(_) => "Entra(..)",
        })
    }
}

impl Auth {
    /// Adds this attempt's credentials; an Entra token is taken now, from the cache or Entra.
    pub async fn apply(&self, request: RequestBuilder) -> Result<RequestBuilder, UpstreamError> {
        Ok(match self {
            Auth::None => request,
            Auth::ApiKey(key) => request.header("api-key", key.expose_secret()),
            Auth::OpenAi { key, organization } => {
                let request = request.bearer_auth(key.expose_secret());
                match organization {
                    Some(org) => request.header("OpenAI-Organization", org),
                    None => request,
                }
            }
            Auth::Entra(tokens) => {
                let token = tokens
                    .token()
                    .await
                    .map_err(|err| UpstreamError::Credential(err.message))?;
                match token.authorization() {
                    Some(value) => request.header(reqwest::header::AUTHORIZATION, value),
                    None => request.bearer_auth(token.secret().expose_secret()),
                }
            }
        })
    }

    fn is_entra(&self) -> bool {
        matches!(self, Auth::Entra(_))
    }
}

/// Where and how one member of a pool is called.
#[derive(Debug, Clone)]
pub struct Target {
    /// The deployment (or model) name: logs, metrics and error sentences.
    pub name: String,
    /// `host:port` of the endpoint: logs and metrics.
    pub endpoint: String,
    /// Where `POST` goes.
    pub url: Url,
    /// The body's `model`, where the API wants one (Azure's v1 API, OpenAI).
    pub model: Option<String>,
    /// Credentials.
    pub auth: Auth,
}

impl Target {
    /// `POST {url}` with `body` (with this target's `model`, where it has one), authenticated
    /// for this attempt.
    pub async fn post(
        &self,
        client: &reqwest::Client,
        body: &dyn ModelRequest,
    ) -> Result<RequestBuilder, UpstreamError> {
        let json = body
            .to_json(self.model.as_deref())
            .map_err(|err| UpstreamError::InvalidResponse(format!("could not encode the request: {err}")))?;
        let request = client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json);
        self.auth.apply(request).await
    }
}

/// Where a deployment stands.
#[derive(Debug, Clone, Copy)]
enum State {
    Ok,
    /// After a 429, until then.
    Cooling(Instant),
    /// After consecutive failures: no requests until `until`, then one trial at a time.
    Open {
        until: Instant,
        trial: bool,
    },
    /// After a 401, 403 or 404 (`status`), until then.
    SetAside {
        until: Instant,
        status: u16,
    },
}

#[derive(Debug)]
struct Health {
    state: State,
    /// Failures (5xx, connection, attempt timeout) since the last answer.
    failures: u32,
}

#[derive(Debug)]
struct Member {
    target: Target,
    health: Mutex<Health>,
    series: GenAiSeriesCache,
}

/// Why a member cannot take a request now.
enum Unusable {
    /// Cooling until then.
    Cooling(Instant),
    /// Circuit open until then (or a trial is under way).
    Open(Instant),
    /// Set aside after this status.
    SetAside(Instant, u16),
}

impl Member {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        // A panic while the lock was held cannot leave the state half-written: it is plain data.
        self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Why the member cannot take a request at `now`, if it cannot; changes nothing.
    fn unusable(&self, now: Instant) -> Option<Unusable> {
        match self.health().state {
            State::Ok => None,
            State::Cooling(until) | State::SetAside { until, .. } if now >= until => None,
            State::Cooling(until) => Some(Unusable::Cooling(until)),
            State::SetAside { until, status } => Some(Unusable::SetAside(until, status)),
            State::Open { until, trial: false } if now >= until => None,
            State::Open { until, .. } => Some(Unusable::Open(until)),
        }
    }

    /// Takes the member for one attempt if it is usable at `now` (an expired open circuit
    /// gives one caller the trial).
    fn take(&self, now: Instant) -> Option<bool> {
        let mut health = self.health();
        match health.state {
            State::Ok => Some(false),
            State::Cooling(until) | State::SetAside { until, .. } if now >= until => {
                health.state = State::Ok;
                Some(false)
            }
            State::Open { until, trial: false } if now >= until => {
                health.state = State::Open { until, trial: true };
                Some(true)
            }
            State::Cooling(_) | State::SetAside { .. } | State::Open { .. } => None,
        }
    }
}

/// Ends a trial that never reported (its request was dropped): the next caller may try.
struct TrialGuard<'a> {
    member: Option<&'a Member>,
}

impl TrialGuard<'_> {
    fn settle(&mut self) {
        self.member = None;
    }
}

impl Drop for TrialGuard<'_> {
    fn drop(&mut self) {
        if let Some(member) = self.member {
            let mut health = member.health();
            if let State::Open { until, .. } = health.state {
                health.state = State::Open { until, trial: false };
            }
        }
    }
}

/// How one attempt went, for the routing rules.
enum Outcome {
    /// 2xx: the body.
    Success(Vec<u8>),
    /// An answer that ends the request (400, another 4xx, an unusable answer).
    Final(UpstreamError),
    /// 429.
    Throttled(Option<Duration>),
    /// 5xx, connection failure or attempt timeout; with the answer's retry hint.
    Failed(UpstreamError, Option<Duration>),
    /// 401, 403, 404.
    Refused(UpstreamError),
}

/// The deployments of one capability, in order of preference, with their health.
#[derive(Debug)]
pub struct Pool {
    capability: Capability,
    backend: &'static str,
    kind: CallKind,
    members: Vec<Arc<Member>>,
    transport: UpstreamClient,
    routing: Routing,
    max_attempts: u32,
    attempt_timeout: Duration,
}

/// What a pool is built with besides its targets.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// `chat` or `image`.
    pub capability: Capability,
    /// The backend's name, the `backend` label of the per-attempt metrics.
    pub backend: &'static str,
    /// `gen_ai.provider.name`: `azure.ai.openai`, `openai`, or the local server's name.
    pub provider: String,
    /// Whether prompts and completions go on the spans.
    pub capture_content: bool,
    /// The rules for failing deployments.
    pub routing: Routing,
    /// `UPSTREAM_MAX_RETRIES`: attempts after the first, across the pool.
    pub max_retries: u32,
    /// The longest one attempt may take.
    pub attempt_timeout: Duration,
}

impl Pool {
    /// A pool of `targets` (in order of preference); at least one.
    pub fn new(targets: Vec<Target>, transport: UpstreamClient, options: PoolOptions) -> Self {
        let pool = Self {
            capability: options.capability,
            backend: options.backend,
            kind: CallKind {
                operation: options.capability.operation(),
                provider: options.provider,
                capture_content: options.capture_content,
            },
            members: targets
                .into_iter()
                .map(|target| {
                    Arc::new(Member {
                        target,
                        health: Mutex::new(Health {
                            state: State::Ok,
                            failures: 0,
                        }),
                        series: GenAiSeriesCache::default(),
                    })
                })
                .collect(),
            transport,
            routing: options.routing,
            max_attempts: options.max_retries.saturating_add(1),
            attempt_timeout: options.attempt_timeout,
        };
        for member in &pool.members {
            pool.report(member, DeploymentState::Ok);
        }
        pool
    }

    /// The targets, in order of preference.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.members.iter().map(|m| &m.target)
    }

    /// The HTTP client, for requests outside the routing (a local server's model list).
    pub fn client(&self) -> &reqwest::Client {
        self.transport.client()
    }

    /// POSTs `body` to the pool under the routing rules and returns the first 2xx body; each
    /// attempt is a GenAI call (span and metrics).
    pub async fn post(&self, body: &dyn ModelRequest, ctx: &CallContext) -> Result<Vec<u8>, UpstreamError> {
        self.route(ctx, Some(body), |target, client| target.post(client, body))
            .await
    }

    /// Sends the request `build` makes for a target, under the routing rules: for calls that
    /// are not model calls (a local server's model list).
    pub async fn send<'a, F, Fut>(&'a self, ctx: &CallContext, build: F) -> Result<Vec<u8>, UpstreamError>
    where
        F: Fn(&'a Target, &'a reqwest::Client) -> Fut,
        Fut: Future<Output = Result<RequestBuilder, UpstreamError>>,
    {
        self.route(ctx, None, build).await
    }

    /// The routing loop; `model_call` is the body of a GenAI call, `None` for anything else.
    async fn route<'a, F, Fut>(
        &'a self,
        ctx: &CallContext,
        model_call: Option<&dyn ModelRequest>,
        build: F,
    ) -> Result<Vec<u8>, UpstreamError>
    where
        F: Fn(&'a Target, &'a reqwest::Client) -> Fut,
        Fut: Future<Output = Result<RequestBuilder, UpstreamError>>,
    {
        let count = self.members.len();
        let mut attempts: u32 = 0;
        let mut tried = vec![false; count];
        let mut previous: Option<usize> = None;
        let mut next_start = 0;
        let mut last: Option<(UpstreamError, Option<Duration>)> = None;
        let mut refusal: Option<UpstreamError> = None;
        loop {
            let now = Instant::now();
            let Some((index, trial)) = self.pick(next_start, now) else {
                match self.earliest_cooldown(now) {
                    // Waiting for a cooldown is not an attempt; the budget still bounds it.
                    Some(until) if until < ctx.deadline => {
                        let wait = until - now;
                        tracing::info!(
                            capability = self.capability.label(),
                            wait_ms = wait.as_millis() as u64,
                            "every deployment is cooling down; waiting for the first to be usable"
                        );
                        tokio::time::sleep(wait + spread(wait)).await;
                        // The wait was the pause: the deployment that cooled gets no backoff on top.
                        tried.fill(false);
                        continue;
                    }
                    _ => return Err(self.unavailable(now, attempts, last, refusal)),
                }
            };
            let member = &self.members[index];
            let mut guard = TrialGuard {
                member: trial.then_some(member.as_ref()),
            };
            if tried[index] {
                // The same deployment again (a pool of one, or every other one unusable): back off first.
                let hint = last.as_ref().and_then(|(_, hint)| *hint);
                let wait = hint.map_or_else(|| backoff(attempts), |h| h + spread(h));
                if Instant::now().checked_add(wait).is_none_or(|at| at >= ctx.deadline) {
                    // Waiting would outlast the caller: answer now with what we know.
                    return Err(self.unavailable(now, attempts, last, refusal));
                }
                tracing::info!(
                    capability = self.capability.label(),
                    deployment = %member.target.name,
                    attempt = attempts + 1,
                    wait_ms = wait.as_millis() as u64,
                    "retrying upstream call"
                );
                tokio::time::sleep(wait).await;
            }
            if attempts > 0 {
                self.transport.metrics().retry(self.backend);
            }
            if let Some(from) = previous.filter(|from| *from != index) {
                self.transport.metrics().failover(self.capability.label());
                tracing::info!(
                    capability = self.capability.label(),
                    from = %self.members[from].target.name,
                    from_endpoint = %self.members[from].target.endpoint,
                    to = %member.target.name,
                    to_endpoint = %member.target.endpoint,
                    "failing over to the next deployment"
                );
            }
            attempts += 1;
            tried[index] = true;
            previous = Some(index);
            let outcome = self.attempt(member, attempts, ctx, model_call, &build).await;
            guard.settle();
            match outcome {
                Outcome::Success(body) => {
                    self.answered(member);
                    return Ok(body);
                }
                Outcome::Final(error) => {
                    self.answered(member);
                    return Err(error);
                }
                Outcome::Throttled(hint) => {
                    self.cool(member, hint);
                    last = Some((UpstreamError::Throttled { retry_after: hint }, hint));
                }
                Outcome::Failed(error, hint) => {
                    self.failed(member, &error);
                    last = Some((error, hint));
                }
                Outcome::Refused(error) => {
                    if count == 1 {
                        // Nothing to fail over to: the cause goes back at once, as ever.
                        return Err(error);
                    }
                    self.set_aside(member, &error);
                    refusal = Some(error);
                }
            }
            if attempts >= self.max_attempts {
                return Err(self.unavailable(Instant::now(), attempts, last, refusal));
            }
            next_start = (index + 1) % count;
        }
    }

    /// The first usable member from `start` on, wrapping; `true` with it for a circuit trial.
    fn pick(&self, start: usize, now: Instant) -> Option<(usize, bool)> {
        let count = self.members.len();
        (0..count)
            .map(|offset| (start + offset) % count)
            .find_map(|index| self.members[index].take(now).map(|trial| (index, trial)))
    }

    /// When the first cooling member becomes usable, if any is cooling.
    fn earliest_cooldown(&self, now: Instant) -> Option<Instant> {
        self.members
            .iter()
            .filter_map(|m| match m.unusable(now) {
                Some(Unusable::Cooling(until)) => Some(until),
                _ => None,
            })
            .min()
    }

    /// The error for a request that cannot be served (now, or after its attempts).
    fn unavailable(
        &self,
        now: Instant,
        attempts: u32,
        last: Option<(UpstreamError, Option<Duration>)>,
        refusal: Option<UpstreamError>,
    ) -> UpstreamError {
        let mut cooling = None::<Instant>;
        let mut open = None::<Instant>;
        let mut set_aside = None::<(Instant, u16, &Target)>;
        for member in &self.members {
            match member.unusable(now) {
                Some(Unusable::Cooling(until)) => cooling = Some(cooling.map_or(until, |c| c.min(until))),
                Some(Unusable::Open(until)) => open = Some(open.map_or(until, |o| o.min(until))),
                Some(Unusable::SetAside(until, status)) if set_aside.is_none_or(|(first, ..)| until < first) => {
                    set_aside = Some((until, status, &member.target));
                }
                Some(Unusable::SetAside(..)) | None => {}
            }
        }
        let wait = |until: Instant| until.saturating_duration_since(now);
        match (last, refusal) {
            // This request's own failures say best what happened, unless every deployment
            // cools or waits on a circuit, which says when to come back.
            (Some((UpstreamError::Throttled { .. }, _)), _) | (None, None) if cooling.is_some() => {
                UpstreamError::Throttled {
                    retry_after: cooling.map(wait),
                }
            }
            (None, None) if open.is_some() => UpstreamError::CircuitOpen {
                retry_after: open.map(wait).unwrap_or_default(),
            },
            (None, None) => match set_aside {
                Some((_, status, target)) => self.refused(status, target),
                None => UpstreamError::Timeout,
            },
            (_, Some(refusal)) if attempts > 0 && cooling.is_none() && open.is_none() => refusal,
            (Some((error, _)), _) => error,
            (None, Some(refusal)) => refusal,
        }
    }

    /// The error a 401, 403 or 404 from `target` stands for.
    fn refused(&self, status: u16, target: &Target) -> UpstreamError {
        match status {
            404 => UpstreamError::NotFound {
                name: target.name.clone(),
            },
            status => UpstreamError::Unauthorized {
                status,
                entra: target.auth.is_entra(),
            },
        }
    }

    /// One attempt on `member`, within the attempt timeout and the request's deadline.
    async fn attempt<'a, F, Fut>(
        &'a self,
        member: &'a Member,
        number: u32,
        ctx: &CallContext,
        model_call: Option<&dyn ModelRequest>,
        build: &F,
    ) -> Outcome
    where
        F: Fn(&'a Target, &'a reqwest::Client) -> Fut,
        Fut: Future<Output = Result<RequestBuilder, UpstreamError>>,
    {
        let target = &member.target;
        let started = Instant::now();
        let attempt_deadline = (started + self.attempt_timeout).min(ctx.deadline);
        // The model asked for: the body's `model` where the API takes one (OpenAI, a local
        // server, Azure's v1 API), else the deployment.
        let request_model = model_call
            .and_then(|body| body.model())
            .or(target.model.as_deref())
            .unwrap_or(&target.name);
        let call = model_call.map(|input| ModelCall::start(&self.kind, request_model, input, &target.url, &ctx.trace));
        let send = async {
            // The token is taken here, for this attempt: a long wait before cannot make it stale.
            let mut request = build(target, self.transport.client()).await?;
            if let Some(id) = &ctx.request_id {
                request = request.header("x-request-id", id);
            }
            if let Some(traceparent) = call.as_ref().and_then(ModelCall::traceparent) {
                request = request.header("traceparent", traceparent);
            }
            Ok::<_, UpstreamError>(self.transport.attempt(self.backend, request).await)
        };
        let attempt = tokio::time::timeout_at(attempt_deadline, send).await;
        if let Some(call) = call {
            let ended = match &attempt {
                Ok(Ok(sent)) => Ended::Sent(sent),
                Ok(Err(UpstreamError::Credential(_))) => Ended::Failed("credential"),
                Ok(Err(_)) => Ended::Failed("request_error"),
                Err(_) => Ended::Failed("timeout"),
            };
            call.finish(
                self.transport.metrics(),
                &member.series,
                started.elapsed().as_secs_f64(),
                ended,
            );
        }
        let answered = match &attempt {
            Ok(Ok(Attempt::Answered { status, .. })) => Some(status.as_u16()),
            _ => None,
        };
        let outcome = match attempt {
            Err(_) if attempt_deadline >= ctx.deadline => Outcome::Final(UpstreamError::Timeout),
            Err(_) => Outcome::Failed(UpstreamError::Timeout, None),
            Ok(Err(error)) => Outcome::Final(error),
            Ok(Ok(Attempt::Refused(_, error))) => Outcome::Final(error),
            Ok(Ok(Attempt::Broken(error))) => Outcome::Failed(error, None),
            Ok(Ok(Attempt::Answered {
                status,
                body,
                retry_after,
                ..
            })) => self.judge(target, status, body, retry_after),
        };
        tracing::debug!(
            capability = self.capability.label(),
            deployment = %target.name,
            endpoint = %target.endpoint,
            attempt = number,
            status = answered,
            elapsed_ms = started.elapsed().as_millis() as u64,
            outcome = match &outcome {
                Outcome::Success(_) => "success",
                Outcome::Final(_) => "final",
                Outcome::Throttled(_) => "throttled",
                Outcome::Failed(..) => "failed",
                Outcome::Refused(_) => "refused",
            },
            "upstream attempt"
        );
        outcome
    }

    /// What an answer means for the routing.
    fn judge(&self, target: &Target, status: StatusCode, body: Vec<u8>, retry_after: Option<Duration>) -> Outcome {
        match status {
            status if status.is_success() => Outcome::Success(body),
            StatusCode::TOO_MANY_REQUESTS => Outcome::Throttled(retry_after),
            status if status.is_server_error() => Outcome::Failed(
                UpstreamError::Status {
                    status: status.as_u16(),
                },
                retry_after,
            ),
            StatusCode::BAD_REQUEST => Outcome::Final(classify_bad_request(&body)),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                Outcome::Refused(self.refused(status.as_u16(), target))
            }
            status => Outcome::Final(UpstreamError::Status {
                status: status.as_u16(),
            }),
        }
    }

    fn report(&self, member: &Member, state: DeploymentState) {
        self.transport.metrics().deployment_state(
            self.capability.label(),
            &member.target.endpoint,
            &member.target.name,
            state,
        );
    }

    /// The deployment answered: its failures end, and an open circuit closes.
    fn answered(&self, member: &Member) {
        let mut health = member.health();
        health.failures = 0;
        if matches!(health.state, State::Open { .. }) {
            health.state = State::Ok;
            drop(health);
            tracing::info!(deployment = %member.target.name, endpoint = %member.target.endpoint, "circuit closed");
            self.report(member, DeploymentState::Ok);
        }
    }

    /// 429: cools until the later of the current cooldown and the hint.
    fn cool(&self, member: &Arc<Member>, hint: Option<Duration>) {
        let wait = hint.unwrap_or(self.routing.default_cooldown);
        let Some(until) = Instant::now().checked_add(wait) else {
            return;
        };
        let mut health = member.health();
        let until = match health.state {
            State::Cooling(current) => current.max(until),
            _ => until,
        };
        health.state = State::Cooling(until);
        drop(health);
        tracing::info!(
            deployment = %member.target.name,
            endpoint = %member.target.endpoint,
            cooldown_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64,
            "deployment throttled (429): cooling down"
        );
        self.report(member, DeploymentState::Cooling);
        self.report_when_usable(member, until);
    }

    /// 5xx, connection failure, attempt timeout: counts, and opens the circuit at the threshold
    /// (at once when a trial fails).
    fn failed(&self, member: &Member, error: &UpstreamError) {
        let mut health = member.health();
        health.failures = health.failures.saturating_add(1);
        let trial_failed = matches!(health.state, State::Open { .. });
        if !trial_failed && health.failures < self.routing.circuit_failures {
            return;
        }
        let until = Instant::now() + self.routing.circuit_open;
        health.state = State::Open { until, trial: false };
        let failures = health.failures;
        drop(health);
        tracing::warn!(
            deployment = %member.target.name,
            endpoint = %member.target.endpoint,
            failures,
            open_seconds = self.routing.circuit_open.as_secs(),
            cause = %error,
            "circuit opened: no requests to this deployment until one trial succeeds"
        );
        self.report(member, DeploymentState::Unavailable);
    }

    /// 401, 403, 404 in a pool of two or more: no requests for a while.
    fn set_aside(&self, member: &Arc<Member>, error: &UpstreamError) {
        let status = match error {
            UpstreamError::Unauthorized { status, .. } => *status,
            _ => 404,
        };
        let until = Instant::now() + self.routing.set_aside;
        member.health().state = State::SetAside { until, status };
        tracing::warn!(
            deployment = %member.target.name,
            endpoint = %member.target.endpoint,
            status,
            set_aside_seconds = self.routing.set_aside.as_secs(),
            cause = %error,
            "deployment set aside"
        );
        self.report(member, DeploymentState::Unavailable);
        self.report_when_usable(member, until);
    }

    /// The state gauge goes back to ok when a cooldown or set-aside ends, even if no request
    /// comes to notice it.
    fn report_when_usable(&self, member: &Arc<Member>, until: Instant) {
        let (metrics, capability, member) = (
            self.transport.metrics().clone(),
            self.capability.label(),
            Arc::clone(member),
        );
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            // Only if nothing newer (a longer cooldown, an open circuit) took its place.
            let expired = match member.health().state {
                State::Cooling(end) | State::SetAside { until: end, .. } => end <= Instant::now(),
                State::Ok => true,
                State::Open { .. } => false,
            };
            if expired {
                metrics.deployment_state(
                    capability,
                    &member.target.endpoint,
                    &member.target.name,
                    DeploymentState::Ok,
                );
            }
        });
    }
}
