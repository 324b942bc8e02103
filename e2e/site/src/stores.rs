//! The site's two stores. Each keeps one connection, shared by every
//! request, and opens a new one after an error (not after a mere timeout):
//! a failover closes the old primary's connections, and the Service routes
//! a new one to whichever member takes writes now. An operation is retried
//! for up to [`RETRY_FOR`], so a store failover shorter than that costs a
//! visitor a slow page rather than an error.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::warn;

/// How long one operation keeps trying before the page fails.
const RETRY_FOR: Duration = Duration::from_secs(8);
/// Pause between two tries.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Bound of one connection attempt and of one statement or command.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// A session lives a day after login.
const SESSION_SECONDS: u64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SESSION_STORE_URL: {0}")]
    SessionUrl(#[source] redis::RedisError),
    #[error("DATABASE_URL: {0}")]
    DatabaseUrl(#[source] tokio_postgres::Error),
    #[error("the session store: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("no replica confirmed the session")]
    Unconfirmed,
    #[error("{0} timed out")]
    Timeout(&'static str),
}

impl StoreError {
    /// Whether the connection should be replaced. Not after a timeout: a
    /// server that is slow (a synchronous commit waiting for a mirror) is
    /// slow on a new connection too, and the old one's backend lingers until
    /// its commit is done, so replacing it at every timeout piles up
    /// backends until the server refuses every client.
    fn breaks_connection(&self) -> bool {
        !matches!(self, StoreError::Timeout(_))
    }
}

/// Run `call` until it succeeds or [`RETRY_FOR`] has passed. Each try drops
/// its connection when it fails.
async fn retried<T, F, Fut>(what: &'static str, mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() + RETRY_PAUSE >= deadline => return Err(err),
            Err(err) => {
                warn!(%err, what, "retrying on a new connection");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Sessions in the SessionStore: `session:<id>` holds the user's name.
pub struct Sessions {
    client: redis::Client,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl Sessions {
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(StoreError::SessionUrl)?;
        Ok(Sessions { client, connection: Mutex::new(None) })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut cached = self.connection.lock().await;
        if let Some(connection) = cached.as_ref() {
            return Ok(connection.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT));
        let connection = self.client.get_multiplexed_async_connection_with_config(&config).await?;
        *cached = Some(connection.clone());
        Ok(connection)
    }

    async fn forget(&self) {
        *self.connection.lock().await = None;
    }

    /// One try of `call` on the shared connection, bounded by
    /// [`CALL_TIMEOUT`], forgetting the connection on failure.
    async fn once<T, Fut>(
        &self,
        what: &'static str,
        call: impl FnOnce(MultiplexedConnection) -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let attempt = async { call(self.connection().await?).await };
        let result =
            tokio::time::timeout(CALL_TIMEOUT, attempt).await.unwrap_or(Err(StoreError::Timeout(what)));
        if result.as_ref().is_err_and(StoreError::breaks_connection) {
            self.forget().await;
        }
        result
    }

    /// A new session for `user`, confirmed by one replica; its id.
    pub async fn create(&self, user: &str) -> Result<String, StoreError> {
        let id = format!("{:032x}", rand::random::<u128>());
        let key = format!("session:{id}");
        retried("creating a session", || {
            self.once("creating a session", |mut connection| {
                let (key, user) = (key.clone(), user.to_string());
                async move {
                    let () = redis::cmd("SET")
                        .arg(&key)
                        .arg(&user)
                        .arg("EX")
                        .arg(SESSION_SECONDS)
                        .query_async(&mut connection)
                        .await?;
                    let replicas: i64 =
                        redis::cmd("WAIT").arg(1).arg(1_000).query_async(&mut connection).await?;
                    if replicas < 1 { Err(StoreError::Unconfirmed) } else { Ok(()) }
                }
            })
        })
        .await?;
        Ok(id)
    }

    /// The user of session `id`, if it exists.
    pub async fn user(&self, id: &str) -> Result<Option<String>, StoreError> {
        let key = format!("session:{id}");
        retried("reading a session", || {
            self.once("reading a session", |mut connection| {
                let key = key.clone();
                async move { Ok(redis::cmd("GET").arg(&key).query_async(&mut connection).await?) }
            })
        })
        .await
    }
}

/// Page views in the DatabaseMirror's `page_views` table.
pub struct Views {
    config: tokio_postgres::Config,
    client: Mutex<Option<Arc<tokio_postgres::Client>>>,
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS page_views (
    id bigserial PRIMARY KEY,
    user_name text,
    path text NOT NULL,
    at timestamptz NOT NULL DEFAULT now())";

impl Views {
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(StoreError::DatabaseUrl)?;
        config.connect_timeout(CALL_TIMEOUT).application_name("hostwright-demo-site");
        Ok(Views { config, client: Mutex::new(None) })
    }

    async fn client(&self) -> Result<Arc<tokio_postgres::Client>, StoreError> {
        let mut cached = self.client.lock().await;
        if let Some(client) = cached.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                warn!(%err, "the database connection ended");
            }
        });
        client.batch_execute(CREATE_TABLE).await?;
        let client = Arc::new(client);
        *cached = Some(client.clone());
        Ok(client)
    }

    /// Record a view of `path` by `user`; the row's id once it is committed
    /// (with `replication: sync`, once a mirror has it too).
    pub async fn record(&self, user: Option<&str>, path: &str) -> Result<i64, StoreError> {
        retried("recording a page view", || async {
            let attempt = async {
                let client = self.client().await?;
                let row = client
                    .query_one(
                        "INSERT INTO page_views (user_name, path) VALUES ($1, $2) RETURNING id",
                        &[&user, &path],
                    )
                    .await?;
                Ok(row.get::<_, i64>(0))
            };
            let result = tokio::time::timeout(CALL_TIMEOUT, attempt)
                .await
                .unwrap_or(Err(StoreError::Timeout("recording a page view")));
            if result.as_ref().is_err_and(StoreError::breaks_connection) {
                *self.client.lock().await = None;
            }
            result
        })
        .await
    }
}
