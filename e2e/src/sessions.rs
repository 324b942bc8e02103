//! Driving a SessionStore from the outside, as a site does: through the
//! `<name>` Service's EndpointSlice (servers listen on the loopback twins of
//! their pod IPs), with the password from `<name>-connection`, and a
//! [`Writer`] of sessions that records every write the store confirmed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisConnectionInfo};

pub use crate::database::{all_healthy, current_primary};
use crate::testbed::ready_endpoints;
use crate::writer::Target;
pub use crate::writer::Writer;

const PORT: u16 = 6379;

/// How a site logs in: the ACL user and password of `<name>-connection`,
/// over TLS verified against the store's CA for the Service's name.
#[derive(Clone, Debug)]
pub struct Login {
    pub user: String,
    pub password: String,
    /// The name the server's certificate is verified for (`host`).
    pub server_name: String,
    pub ca_pem: String,
}

/// The login in `<name>-connection`.
pub async fn login(client: &Client, namespace: &str, name: &str) -> Result<Login> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(&format!("{name}-connection"))
        .await
        .with_context(|| format!("Secret {name}-connection"))?;
    let data = secret.data.unwrap_or_default();
    let get = |key: &str| -> Result<String> {
        let value = data.get(key).with_context(|| format!("no {key} in Secret {name}-connection"))?;
        Ok(String::from_utf8(value.0.clone())?)
    };
    Ok(Login {
        user: get("username")?,
        password: get("password")?,
        server_name: get("host")?,
        ca_pem: get("ca.crt")?,
    })
}

/// A connection to the Redis server at `host` (an address).
pub async fn connect(host: &str, login: &Login) -> Result<MultiplexedConnection> {
    let settings = RedisConnectionInfo::default()
        .set_username(&login.user)
        .set_password(&login.password)
        .set_skip_set_lib_name();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    let address = format!("{host}:{PORT}");
    let work = hostwright::tls::client::redis(&address, &login.server_name, &login.ca_pem, &settings, config);
    Ok(tokio::time::timeout(Duration::from_secs(3), work)
        .await
        .map_err(|_| anyhow!("connecting to {address} timed out"))??)
}

/// A connection to whatever the `<name>` Service routes to, waiting up to
/// ten seconds for a ready endpoint, as a reconnecting client would.
pub async fn connect_primary(
    client: &Client,
    namespace: &str,
    name: &str,
    login: &Login,
) -> Result<MultiplexedConnection> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ready_endpoints(client, namespace, name).await?.first() {
            Some(host) => return connect(host, login).await,
            None if Instant::now() >= deadline => bail!("Service {name} has no ready endpoint"),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Session keys `session:<id>` written through the `<name>` Service; with
/// `confirm`, a write counts only once `WAIT 1` says a replica has it.
#[derive(Clone)]
pub struct Sessions {
    pub client: Client,
    pub namespace: String,
    pub name: String,
    pub login: Login,
    pub confirm: bool,
}

impl Target for Sessions {
    type Connection = MultiplexedConnection;

    async fn connect(&self) -> Result<MultiplexedConnection> {
        connect_primary(&self.client, &self.namespace, &self.name, &self.login).await
    }

    async fn write(&self, conn: &mut MultiplexedConnection, id: i64) -> Result<()> {
        let () = redis::cmd("SET")
            .arg(format!("session:{id}"))
            .arg(format!("user-{id}"))
            .arg("EX")
            .arg(86_400)
            .query_async(conn)
            .await?;
        if self.confirm {
            let replicas: i64 = redis::cmd("WAIT").arg(1).arg(1000).query_async(conn).await?;
            if replicas < 1 {
                return Err(anyhow!("no replica confirmed session {id}"));
            }
        }
        Ok(())
    }
}

impl Sessions {
    /// Confirmed session ids missing on the current primary.
    pub async fn lost(&self, confirmed: &[i64]) -> Result<Vec<i64>> {
        let mut conn = connect_primary(&self.client, &self.namespace, &self.name, &self.login).await?;
        let mut lost = Vec::new();
        for chunk in confirmed.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|id| format!("session:{id}")).collect();
            let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
            lost.extend(chunk.iter().zip(values).filter(|(_, v)| v.is_none()).map(|(id, _)| *id));
        }
        Ok(lost)
    }
}
