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
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

pub use crate::database::{all_healthy, current_primary};
use crate::testbed::ready_endpoints;
use crate::writer::Target;
pub use crate::writer::Writer;

const PORT: u16 = 6379;

/// The password in `<name>-connection`.
pub async fn password(client: &Client, namespace: &str, name: &str) -> Result<String> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(&format!("{name}-connection"))
        .await
        .with_context(|| format!("Secret {name}-connection"))?;
    let value = secret.data.and_then(|d| d.get("password").cloned()).context("no password in the Secret")?;
    Ok(String::from_utf8(value.0)?)
}

/// A connection to the Redis server at `host`.
pub async fn connect(host: &str, password: &str) -> Result<MultiplexedConnection> {
    let settings = RedisConnectionInfo::default().set_password(password).set_skip_set_lib_name();
    let info =
        ConnectionAddr::Tcp(host.to_string(), PORT).into_connection_info()?.set_redis_settings(settings);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    Ok(redis::Client::open(info)?.get_multiplexed_async_connection_with_config(&config).await?)
}

/// A connection to whatever the `<name>` Service routes to, waiting up to
/// ten seconds for a ready endpoint, as a reconnecting client would.
pub async fn connect_primary(
    client: &Client,
    namespace: &str,
    name: &str,
    password: &str,
) -> Result<MultiplexedConnection> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ready_endpoints(client, namespace, name).await?.first() {
            Some(host) => return connect(host, password).await,
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
    pub password: String,
    pub confirm: bool,
}

impl Target for Sessions {
    type Connection = MultiplexedConnection;

    async fn connect(&self) -> Result<MultiplexedConnection> {
        connect_primary(&self.client, &self.namespace, &self.name, &self.password).await
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
        let mut conn = connect_primary(&self.client, &self.namespace, &self.name, &self.password).await?;
        let mut lost = Vec::new();
        for chunk in confirmed.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|id| format!("session:{id}")).collect();
            let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
            lost.extend(chunk.iter().zip(values).filter(|(_, v)| v.is_none()).map(|(id, _)| *id));
        }
        Ok(lost)
    }
}
