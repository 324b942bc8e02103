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
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("connecting to the session store at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
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
    /// The URL's user, password and database.
    login: redis::RedisConnectionInfo,
    host: String,
    port: u16,
    /// None: a plain `redis://` URL (an external store without TLS).
    tls: Option<Arc<rustls::ClientConfig>>,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl Sessions {
    /// From `SESSION_STORE_URL`: `rediss://` connects over TLS, verifying
    /// the server against the store's CA file.
    pub fn new(url: &str, ca_file: &str) -> Result<Self, StoreError> {
        use redis::IntoConnectionInfo as _;
        let tls = url.starts_with("rediss://");
        let plain = if tls { url.replacen("rediss://", "redis://", 1) } else { url.to_string() };
        let info = plain.as_str().into_connection_info().map_err(StoreError::SessionUrl)?;
        let (host, port) = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            other => (other.to_string(), 6379),
        };
        let tls = if tls { Some(crate::tls::client_config(ca_file)?) } else { None };
        Ok(Sessions { login: info.redis_settings().clone(), host, port, tls, connection: Mutex::new(None) })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut cached = self.connection.lock().await;
        if let Some(connection) = cached.as_ref() {
            return Ok(connection.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT));
        let connection = tokio::time::timeout(CALL_TIMEOUT, self.connect(config))
            .await
            .map_err(|_| StoreError::Timeout("connecting to the session store"))??;
        *cached = Some(connection.clone());
        Ok(connection)
    }

    async fn connect(
        &self,
        config: redis::AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, StoreError> {
        let address = format!("{}:{}", self.host, self.port);
        let connect_err = |source| StoreError::Connect { address: address.clone(), source };
        let tcp = tokio::net::TcpStream::connect(&address).await.map_err(connect_err)?;
        let _ = tcp.set_nodelay(true);
        let (connection, driver) = match &self.tls {
            Some(tls) => {
                let name = crate::tls::server_name(&self.host)?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(connect_err)?;
                let (c, d) = MultiplexedConnection::new_with_config(&self.login, stream, config).await?;
                (c, Box::pin(d) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>)
            }
            None => {
                let (c, d) = MultiplexedConnection::new_with_config(&self.login, tcp, config).await?;
                (c, Box::pin(d) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>)
            }
        };
        tokio::spawn(driver);
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
    /// Verifies the server for the URL's host against the store's CA.
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    client: Mutex<Option<Arc<tokio_postgres::Client>>>,
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS page_views (
    id bigserial PRIMARY KEY,
    user_name text,
    path text NOT NULL,
    at timestamptz NOT NULL DEFAULT now())";

impl Views {
    /// From `DATABASE_URL`; the CA is the URL's `sslrootcert`, else `ca_file`.
    pub fn new(url: &str, ca_file: &str) -> Result<Self, StoreError> {
        let (url, root_cert) = crate::tls::postgres_url(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(StoreError::DatabaseUrl)?;
        config.connect_timeout(CALL_TIMEOUT).application_name("hostwright-demo-site");
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
        let tls = crate::tls::client_config(root_cert.as_deref().unwrap_or(ca_file))?;
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
        Ok(Views { config, tls, client: Mutex::new(None) })
    }

    async fn client(&self) -> Result<Arc<tokio_postgres::Client>, StoreError> {
        let mut cached = self.client.lock().await;
        if let Some(client) = cached.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
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
