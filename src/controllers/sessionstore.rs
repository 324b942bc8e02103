//! SessionStore as a [`Replicated`] store: Redis members under the same
//! failover engine as DatabaseMirror, one generated password in the
//! connection Secret. An `external` store deploys nothing: the operator
//! checks that it answers and publishes it in the same connection Secret.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use redis::{ErrorKind, ServerErrorKind};

use super::invalid::DeserializeGuard;
use super::members::{
    Context, Replicated, SharedChildren, StoreStatus, Summary, last_written, policy, random_password, status,
    write_status,
};
use super::watch::{SharedWatch, Watches};
use super::{Error, jittered};
use crate::agent::redis::{RedisError, command};
use crate::api::common::condition_type::{DEGRADED, PROGRESSING, READY};
use crate::api::common::{DataDurability, FailoverSpec, PrimaryUpdate, ReplicationStatus, StorePhase};
use crate::api::sessionstore::{Durability, ExternalSessionStore};
use crate::api::{SessionStore, SessionStoreStatus};
use crate::conditions::{self, Observed};
use crate::failover::Policy;
use crate::resources::BuildError;
use crate::resources::members::Blueprint;
use crate::resources::sessionstore::{
    self, ExternalEndpoint, Passwords, agent_credentials, agent_credentials_name, blueprint, config,
    connection, connection_name, external_endpoint,
};

/// How often an external store is checked again.
const EXTERNAL_CHECK: Duration = Duration::from_secs(30);
/// How long an external store may take to answer a check.
const EXTERNAL_TIMEOUT: Duration = Duration::from_secs(3);

impl StoreStatus for SessionStoreStatus {
    fn replication(&self) -> &ReplicationStatus {
        &self.replication
    }

    fn replication_mut(&mut self) -> &mut ReplicationStatus {
        &mut self.replication
    }

    fn without_positions(&self) -> Self {
        let mut s = self.clone();
        status::clear_positions(&mut s.replication);
        s
    }
}

impl Replicated for SessionStore {
    const CONTROLLER: &'static str = sessionstore::APP_NAME;
    const STATUS_RESOURCE: &'static str = "sessionstores/status";
    type Status = SessionStoreStatus;
    type Passwords = Passwords;

    fn shared_watch(watches: &Watches) -> &SharedWatch<DeserializeGuard<Self>> {
        &watches.session_stores
    }

    fn current_status(&self) -> Option<&SessionStoreStatus> {
        self.status.as_ref()
    }

    fn status(&self, replication: ReplicationStatus, _summary: Summary) -> SessionStoreStatus {
        SessionStoreStatus { replication, connection_secret: Some(connection_name(self)) }
    }

    fn blueprint(&self) -> Result<Blueprint, BuildError> {
        blueprint(self)
    }

    fn shared_children(&self, blueprint: &Blueprint) -> SharedChildren {
        SharedChildren {
            services: sessionstore::services(self, blueprint).into(),
            budgets: blueprint.budgets().into(),
            config_maps: vec![config(self, blueprint)],
        }
    }

    fn failover(&self) -> &FailoverSpec {
        &self.spec.failover
    }

    fn update_strategy(&self) -> PrimaryUpdate {
        self.spec.update_strategy.primary
    }

    fn policy(&self) -> Policy {
        policy(
            &self.spec.failover,
            self.spec.durability == Durability::Wait,
            self.spec.data_durability == DataDurability::Preferred,
            self.spec.primary.clone(),
        )
    }

    fn read_write_service(&self) -> String {
        self.name_any()
    }

    fn credentials_name(&self) -> String {
        agent_credentials_name(self)
    }

    fn referenced_by(web: &crate::api::WebCluster) -> Option<String> {
        web.spec.session_store_ref.as_ref().map(|r| r.name.clone())
    }

    fn app_secret_name(&self) -> String {
        connection_name(self)
    }

    fn generate_passwords() -> Passwords {
        Passwords { app: random_password(), replication: random_password(), admin: random_password() }
    }

    fn read_passwords(secret: &Secret) -> Result<Passwords, &'static str> {
        Passwords::from_secret(secret)
    }

    fn adopt_passwords(connection: &Secret) -> Option<Passwords> {
        Passwords::adopt(connection, random_password)
    }

    fn credentials(&self, blueprint: &Blueprint, passwords: &Passwords) -> Secret {
        agent_credentials(self, blueprint, passwords)
    }

    fn app_secret(&self, blueprint: &Blueprint, passwords: &Passwords, ca_pem: &str) -> Secret {
        connection(self, blueprint, &passwords.app, ca_pem)
    }

    async fn external(&self, ctx: &Context<Self>) -> Option<Result<Action, Error>> {
        let external = self.spec.external.as_ref()?;
        Some(reconcile_external(self, external, ctx).await)
    }
}

/// What the check of an external store found.
#[derive(Debug)]
enum Check {
    SecretMissing,
    SecretInvalid(String),
    Unanswered(Unanswered),
    Answers,
}

/// Why an external store did not answer the check, as one of a fixed set
/// of reasons and messages. Whatever the host sends back (an error line, a
/// banner, a reply posing as JSON) never reaches the status, its conditions
/// or Events: a Secret may name any host, and its text could be huge, carry
/// control characters, or pretend to be something the reader trusts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unanswered {
    Refused,
    TimedOut,
    /// Accepted the connection, then closed it without an answer.
    Closed,
    /// No connection at all for another reason: an unknown host, no route.
    CannotConnect,
    AuthenticationFailed,
    /// Answered, but not as Redis answers PING.
    NotRedis,
    /// Answered the check with an error of its own.
    ErrorReply,
}

impl Unanswered {
    /// The Ready condition's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Unanswered::Refused | Unanswered::TimedOut | Unanswered::Closed | Unanswered::CannotConnect => {
                "ExternalUnreachable"
            }
            Unanswered::AuthenticationFailed => "ExternalAuthenticationFailed",
            Unanswered::NotRedis => "ExternalNotRedis",
            Unanswered::ErrorReply => "ExternalErrorReply",
        }
    }

    /// The Ready condition's message (and the Event's note).
    pub fn message(self) -> &'static str {
        match self {
            Unanswered::Refused => "connection refused",
            Unanswered::TimedOut => "timed out: no answer within 3 s",
            Unanswered::Closed => "the connection was closed before an answer",
            Unanswered::CannotConnect => "cannot connect: unknown host or no route to it",
            Unanswered::AuthenticationFailed => {
                "authentication failed: the password in the Secret was refused"
            }
            Unanswered::NotRedis => "not a Redis server: PING was not answered with PONG",
            Unanswered::ErrorReply => "the server answered PING with an error",
        }
    }

    /// Sorts a failed check by what kind of failure it was; the error's
    /// text is only compared against known words, never kept.
    pub fn of(err: &RedisError) -> Self {
        let source = match err {
            RedisError::Timeout { .. } => return Unanswered::TimedOut,
            RedisError::Command { source, .. } => source,
            _ => return Unanswered::CannotConnect,
        };
        if source.is_timeout() {
            return Unanswered::TimedOut;
        }
        if source.is_connection_refusal() {
            return Unanswered::Refused;
        }
        let code = source.code().unwrap_or_default();
        let detail = source.detail().unwrap_or_default().to_ascii_lowercase();
        match source.kind() {
            ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
                Unanswered::AuthenticationFailed
            }
            _ if code == "NOAUTH" || code == "WRONGPASS" => Unanswered::AuthenticationFailed,
            // "ERR invalid password", "ERR AUTH <password> called without
            // any password configured for the default user".
            ErrorKind::Server(ServerErrorKind::ResponseError)
                if detail.contains("password") || detail.starts_with("auth") =>
            {
                Unanswered::AuthenticationFailed
            }
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType | ErrorKind::RESP3NotSupported => {
                Unanswered::NotRedis
            }
            ErrorKind::Server(_) | ErrorKind::Extension => Unanswered::ErrorReply,
            _ if source.is_connection_dropped() => Unanswered::Closed,
            _ => Unanswered::CannotConnect,
        }
    }
}

async fn reconcile_external(
    store: &SessionStore,
    external: &ExternalSessionStore,
    ctx: &Context<SessionStore>,
) -> Result<Action, Error> {
    let namespace = store.namespace().unwrap_or_default();
    let object = format!("{namespace}/{}", store.name_any());
    let secret_name = &external.secret_ref.name;
    let secrets: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    let secret = secrets
        .get_opt(secret_name)
        .await
        .map_err(|source| Error::Status { object: object.clone(), source })?;
    let (check, endpoint) = match secret.as_ref().map(external_endpoint) {
        None => (Check::SecretMissing, None),
        Some(Err(problem)) => (Check::SecretInvalid(problem), None),
        Some(Ok(endpoint)) => (
            probe(&endpoint, EXTERNAL_TIMEOUT).await.map_or_else(Check::Unanswered, |()| Check::Answers),
            Some(endpoint),
        ),
    };
    if let Some(endpoint) = &endpoint {
        let blueprint = blueprint(store).map_err(|source| Error::Build { object: object.clone(), source })?;
        let published = sessionstore::connection_secret(
            blueprint.metadata(connection_name(store)),
            &endpoint.host,
            i32::from(endpoint.port),
            endpoint.password.as_deref(),
        );
        ctx.shared.apply_owned(&published, &ctx.caches.secrets, &store.uid().unwrap_or_default()).await?;
    }

    let (old, resource_version) = last_written(store, ctx);
    let new = external_status(store, secret_name, &check, &old, &Time(Timestamp::now()));
    if let Some(requeue) = write_status(store, ctx, &old, &new, &resource_version).await? {
        return Ok(requeue);
    }
    let reason =
        |s: &SessionStoreStatus| conditions::find(&s.replication.conditions, READY).map(|c| c.reason.clone());
    if reason(&old) != reason(&new)
        && let Some(ready) = conditions::find(&new.replication.conditions, READY)
    {
        let type_ = if ready.status == "True" { EventType::Normal } else { EventType::Warning };
        ctx.shared.event(store, type_, &ready.reason, "Check", ready.message.clone()).await;
    }
    Ok(Action::requeue(jittered(EXTERNAL_CHECK)))
}

/// The status of an external store after a check. Pure.
fn external_status(
    store: &SessionStore,
    secret_name: &str,
    check: &Check,
    old: &SessionStoreStatus,
    now: &Time,
) -> SessionStoreStatus {
    let ready = match check {
        Check::SecretMissing => Observed::new(
            READY,
            false,
            "ExternalSecretNotFound",
            format!("Secret {secret_name} (spec.external.secretRef) does not exist in this namespace"),
        ),
        Check::SecretInvalid(problem) => {
            Observed::new(READY, false, "ExternalSecretInvalid", format!("Secret {secret_name}: {problem}"))
        }
        Check::Unanswered(why) => Observed::new(READY, false, why.reason(), why.message()),
        Check::Answers => {
            Observed::new(READY, true, "ExternalAnswers", "the external session store answers PING")
        }
    };
    let answers = matches!(check, Check::Answers);
    let progressing = Observed::new(PROGRESSING, false, "External", "nothing deployed: an external store");
    let degraded = if answers {
        Observed::new(DEGRADED, false, "ExternalAnswers", "the external session store answers")
    } else {
        Observed::new(DEGRADED, true, ready.reason, ready.message.clone())
    };
    let generation = store.metadata.generation;
    SessionStoreStatus {
        replication: ReplicationStatus {
            observed_generation: generation,
            phase: Some(if answers { StorePhase::Ready } else { StorePhase::Failed }),
            current_primary: Some("external".into()),
            ready: Some(if answers { "1/1" } else { "0/1" }.into()),
            conditions: conditions::merge(
                &old.replication.conditions,
                vec![ready, progressing, degraded],
                generation,
                now,
            ),
            ..ReplicationStatus::default()
        },
        connection_secret: Some(connection_name(store)),
    }
}

/// PING (after AUTH, when a password is given), answered with PONG within
/// `timeout`. The host's own words are logged (escaped, cut short) at debug
/// level only; the result is one of [`Unanswered`].
async fn probe(endpoint: &ExternalEndpoint, timeout: Duration) -> Result<(), Unanswered> {
    let pong: Result<String, _> =
        command(&endpoint.host, endpoint.port, endpoint.password.as_deref(), "PING", &[], timeout).await;
    match pong {
        Ok(answer) if answer == "PONG" => Ok(()),
        Ok(answer) => {
            let answer: String = answer.chars().take(120).collect();
            tracing::debug!(?answer, "external session store: PING answered without PONG");
            Err(Unanswered::NotRedis)
        }
        Err(err) => {
            let error: String = err.to_string().chars().take(300).collect();
            tracing::debug!(?error, "external session store check failed");
            Err(Unanswered::of(&err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SessionStoreSpec;

    fn store() -> SessionStore {
        let spec: SessionStoreSpec = serde_yaml::from_str("external: {secretRef: {name: provider}}").unwrap();
        let mut s = SessionStore::new("sessions", spec);
        s.metadata.namespace = Some("customer-a".into());
        s.metadata.generation = Some(2);
        s
    }

    fn ready(status: &SessionStoreStatus) -> (String, String) {
        let c = conditions::find(&status.replication.conditions, READY).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn each_external_problem_is_a_condition_with_its_reason() {
        let now = Time(Timestamp::now());
        let old = SessionStoreStatus::default();
        let cases = [
            (Check::SecretMissing, "False", "ExternalSecretNotFound"),
            (Check::SecretInvalid("no key url, or host and port".into()), "False", "ExternalSecretInvalid"),
            (Check::Unanswered(Unanswered::Refused), "False", "ExternalUnreachable"),
            (Check::Unanswered(Unanswered::AuthenticationFailed), "False", "ExternalAuthenticationFailed"),
            (Check::Unanswered(Unanswered::NotRedis), "False", "ExternalNotRedis"),
            (Check::Answers, "True", "ExternalAnswers"),
        ];
        for (check, status, reason) in cases {
            let s = external_status(&store(), "provider", &check, &old, &now);
            assert_eq!(ready(&s), (status.to_string(), reason.to_string()), "{check:?}");
            assert_eq!(s.replication.observed_generation, Some(2));
            assert_eq!(s.replication.current_primary.as_deref(), Some("external"));
        }
    }

    /// How a hostile host behaves on each connection it accepts.
    #[derive(Clone)]
    enum Host {
        /// Reads the first command, writes this, then closes.
        Replies(Vec<u8>),
        /// Accepts and closes at once.
        HangsUp,
        /// Accepts and never answers.
        Silent,
    }

    /// A TCP server playing `host` on every connection, and its port.
    async fn hostile(host: Host) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let host = host.clone();
                tokio::spawn(async move {
                    match host {
                        Host::Replies(reply) => {
                            let mut buf = [0u8; 1024];
                            let _ = conn.read(&mut buf).await;
                            let _ = conn.write_all(&reply).await;
                            let _ = conn.shutdown().await;
                        }
                        Host::HangsUp => drop(conn),
                        Host::Silent => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            drop(conn);
                        }
                    }
                });
            }
        });
        port
    }

    /// Every reply a hostile host may send ends as one fixed reason and
    /// message; nothing of its text reaches the status.
    #[tokio::test]
    async fn hostile_replies_never_reach_the_status() {
        let long = format!("-ERR {}\r\n", "A".repeat(100_000));
        let cases: Vec<(&str, Host, Option<&str>, Unanswered)> = vec![
            ("a huge error line", Host::Replies(long.into_bytes()), None, Unanswered::ErrorReply),
            (
                "control characters in an error",
                Host::Replies(b"-EVIL \x1b[31mred\x07\x00\r\n".to_vec()),
                None,
                Unanswered::ErrorReply,
            ),
            (
                "fake JSON as a simple string",
                Host::Replies(br#"+{"status":"True","reason":"ExternalAnswers","message":"evil"}"#.iter().chain(b"\r\n").copied().collect()),
                None,
                Unanswered::NotRedis,
            ),
            (
                "an HTTP server",
                Host::Replies(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"evil\":true}".to_vec()),
                None,
                Unanswered::NotRedis,
            ),
            ("binary noise", Host::Replies(vec![0x00, 0xff, 0xfe, 0x1b, b'\n', 0x80]), None, Unanswered::NotRedis),
            ("PONG with a tail", Host::Replies(b"+PONG\x00evil\r\n".to_vec()), None, Unanswered::NotRedis),
            ("an integer", Host::Replies(b":12345\r\n".to_vec()), None, Unanswered::NotRedis),
            (
                "a wrong password",
                Host::Replies(b"-WRONGPASS evil \x1b]0;title\x07 invalid username-password pair\r\n".to_vec()),
                Some("pw"),
                Unanswered::AuthenticationFailed,
            ),
            (
                "no password given",
                Host::Replies(b"-NOAUTH Authentication required. evil\r\n".to_vec()),
                None,
                Unanswered::AuthenticationFailed,
            ),
            ("a hang-up", Host::HangsUp, None, Unanswered::Closed),
            ("silence", Host::Silent, None, Unanswered::TimedOut),
        ];
        let hostile_words = ["AAAAAAAAAA", "evil", "EVIL", "31m", "title", "HTTP", "{", "12345"];
        let now = Time(Timestamp::now());
        for (what, host, password, expected) in cases {
            let port = hostile(host).await;
            let endpoint =
                ExternalEndpoint { host: "127.0.0.1".into(), port, password: password.map(String::from) };
            let outcome = probe(&endpoint, Duration::from_millis(500)).await;
            assert_eq!(outcome, Err(expected), "{what}");
            let status = external_status(
                &store(),
                "provider",
                &Check::Unanswered(expected),
                &Default::default(),
                &now,
            );
            for c in &status.replication.conditions {
                assert!(c.message.len() < 100, "{what}: {:?}", c.message);
                assert!(
                    c.message.chars().all(|ch| ch == ' ' || ch.is_ascii_graphic()),
                    "{what}: {:?}",
                    c.message
                );
                for word in hostile_words {
                    assert!(!c.message.contains(word) && !c.reason.contains(word), "{what}: {c:?}");
                }
            }
            assert_eq!(ready(&status), ("False".to_string(), expected.reason().to_string()), "{what}");
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_and_a_redis_that_pongs_answers() {
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let endpoint = ExternalEndpoint { host: "127.0.0.1".into(), port: closed, password: None };
        assert_eq!(probe(&endpoint, Duration::from_millis(500)).await, Err(Unanswered::Refused));
        let port = hostile(Host::Replies(b"+PONG\r\n".to_vec())).await;
        let endpoint = ExternalEndpoint { host: "127.0.0.1".into(), port, password: None };
        assert_eq!(probe(&endpoint, Duration::from_millis(500)).await, Ok(()));
    }

    #[test]
    fn the_passwords_are_read_back_and_a_missing_one_is_named() {
        let mut managed = SessionStore::new("sessions", serde_yaml::from_str("{}").unwrap());
        managed.metadata.namespace = Some("customer-a".into());
        managed.metadata.uid = Some("uid".into());
        let blueprint = managed.blueprint().unwrap();
        let passwords = Passwords { app: "a".into(), replication: "r".into(), admin: "s".into() };
        let secret = managed.credentials(&blueprint, &passwords);
        assert_eq!(SessionStore::read_passwords(&secret), Ok(passwords.clone()));
        let mut app_only = managed.app_secret(&blueprint, &passwords, "ca");
        assert_eq!(SessionStore::read_passwords(&app_only), Err("replication-password"));
        assert!(SessionStore::adopt_passwords(&app_only).is_none(), "this version's: never adopted");
        // A store made before the members had a Secret: its one password stays the application's.
        app_only.data.as_mut().unwrap().remove("ca.crt");
        let adopted = SessionStore::adopt_passwords(&app_only).unwrap();
        assert_eq!(adopted.app, "a");
        assert!(adopted.replication != "r" && adopted.admin != "s");
    }
}
