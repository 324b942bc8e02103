//! The agent's Redis driver against real Redis 7 servers (Debian's
//! redis-server, installed by `make deps`): a primary and a replica that
//! acks writes for WAIT, a replica waiting read-only for a primary, a
//! promotion, a replica repointed in place, and the old primary rejoining
//! with its diverged write discarded. Every member runs as in a pod: TLS
//! only, ACL users, administered over a unix socket.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hostwright::agent::certificates::Certificates;
use hostwright::agent::plan::Endpoint;
use hostwright::agent::redis::{CONFIG_FILE, Redis, RedisMember};
use hostwright::agent::server::{Server, Start};
use hostwright::contract::DataState;
use hostwright::contract::keys::{credentials as files, tls as tls_files};
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

/// A plaintext connection to `port`, as a client that ignores TLS would try.
async fn plaintext(port: u16) -> redis::RedisResult<String> {
    let settings =
        RedisConnectionInfo::default().set_username("app").set_password(PASSWORD).set_skip_set_lib_name();
    let info =
        ConnectionAddr::Tcp("127.0.0.1".into(), port).into_connection_info()?.set_redis_settings(settings);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let mut conn = redis::Client::open(info)?.get_multiplexed_async_connection_with_config(&config).await?;
    redis::cmd("PING").query_async(&mut conn).await
}

/// The application's password (quotes and spaces: the config file quotes it).
const PASSWORD: &str = "s3cret \"quoted\" pass";
/// The names the test servers' certificates carry.
const SERVER_NAME: &str = "sessions.customer-a.svc";

fn server_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("HOSTWRIGHT_REDIS_SERVER")
        .map_or_else(|| PathBuf::from("/usr/bin/redis-server"), PathBuf::from);
    bin.exists().then_some(bin)
}

/// As root, run the servers as `redis` (Debian's package creates it), so the
/// driver's ownership handling is exercised.
fn run_as() -> Option<(u32, u32)> {
    let id = |args: &[&str]| -> Option<u32> {
        let out = std::process::Command::new("id").args(args).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id(&["-u"])? != 0 {
        return None;
    }
    Some((id(&["-u", "redis"]).expect("a redis user (Debian's package creates it)"), id(&["-g", "redis"])?))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The store's certificates in `<root>/tls` (see [`common::issue_certificates`]).
fn issue_certificates(root: &Path) -> String {
    common::issue_certificates(root, SERVER_NAME)
}

fn member(root: &Path, name: &str, settings: Option<&str>) -> RedisMember {
    if !root.join("tls").exists() {
        issue_certificates(root);
    }
    let credentials_dir = root.join(format!("{name}-credentials"));
    std::fs::create_dir_all(&credentials_dir).unwrap();
    std::fs::write(credentials_dir.join(files::APP_PASSWORD), format!("{PASSWORD}\n")).unwrap();
    std::fs::write(credentials_dir.join(files::REPLICATION_PASSWORD), "repl\n").unwrap();
    std::fs::write(credentials_dir.join(files::SUPERUSER_PASSWORD), "agent\n").unwrap();
    let settings_file = settings.map(|text| {
        let path = root.join(format!("{name}-settings.conf"));
        std::fs::write(&path, text).unwrap();
        path
    });
    let socket_dir = root.join(format!("{name}-run"));
    std::fs::create_dir_all(&socket_dir).unwrap();
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(&socket_dir, Some(uid), Some(gid)).unwrap();
    }
    RedisMember {
        redis: Redis {
            server_bin: server_bin().unwrap(),
            data_dir: root.join(name).join("data"),
            listen_address: "127.0.0.1".into(),
            port: free_port(),
            settings_file,
            run_as: run_as(),
            tls: Some(Certificates::new(root.join("tls"), socket_dir.clone(), run_as())),
            socket_dir,
        },
        credentials_dir,
    }
}

fn endpoint(name: &str, m: &RedisMember) -> Endpoint {
    Endpoint { member: name.into(), host: "127.0.0.1".into(), port: m.redis.port, lineage: None }
}

async fn get(m: &RedisMember, key: &str) -> Option<String> {
    m.call("GET", &[key]).await.unwrap()
}

/// `key` reads `value` (a replica loading a full resync answers -LOADING).
async fn holds(m: &RedisMember, key: &str, value: &str) -> bool {
    m.call::<Option<String>>("GET", &[key]).await.is_ok_and(|v| v.as_deref() == Some(value))
}

/// A client's own connection: WAIT counts the replicas that acked this
/// connection's last write.
async fn client(m: &RedisMember) -> redis::aio::MultiplexedConnection {
    client_as(m, "app", PASSWORD).await.unwrap()
}

/// A connection over TLS as `user`, verifying the server for the Service's
/// name against the store's CA.
async fn client_as(
    m: &RedisMember,
    user: &str,
    password: &str,
) -> Result<redis::aio::MultiplexedConnection, hostwright::tls::client::RedisTlsError> {
    let ca = std::fs::read_to_string(m.redis.tls.as_ref().unwrap().source.join(tls_files::CA)).unwrap();
    let settings =
        RedisConnectionInfo::default().set_username(user).set_password(password).set_skip_set_lib_name();
    // Room for WAIT's own timeout (the crate's default is half a second).
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    let address = format!("127.0.0.1:{}", m.redis.port);
    hostwright::tls::client::redis(&address, SERVER_NAME, &ca, &settings, config).await
}

async fn save_rules(m: &RedisMember) -> String {
    let pair: (String, String) = m.call("CONFIG", &["GET", "save"]).await.unwrap();
    pair.1
}

/// Poll `check` until it holds, for at most 20 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_wait_promote_repoint_rejoin() {
    if server_bin().is_none() {
        eprintln!("skipped: no /usr/bin/redis-server (e2e/install-deps installs Debian's redis-server)");
        return;
    }
    let root = std::env::temp_dir().join(format!("hostwright-redis-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&root).unwrap();
    // The operator's settings come first: snapshots on (ours default to
    // off), and a port the agent's own setting must override.
    let a = member(&root, "s-1", Some("save 900 1\nport 1\n"));
    let (b, c) = (member(&root, "s-2", None), member(&root, "s-3", None));
    let (ep_a, ep_b) = (endpoint("s-1", &a), endpoint("s-2", &b));

    // The first primary.
    assert_eq!(a.data_state().await, DataState::Empty);
    a.initialize().await.unwrap();
    assert_eq!(a.data_state().await, DataState::Primary);
    let mut a_server = a.start(Start::Primary).await.unwrap();
    assert_eq!(save_rules(&a).await, "900 1");
    let conf = std::fs::metadata(a.redis.data_dir.join(CONFIG_FILE)).unwrap();
    assert_eq!(conf.mode() & 0o777, 0o600, "the config file holds the password");
    if let Some((uid, _)) = run_as() {
        assert_eq!(conf.uid(), uid);
    }

    // A replica cloned from it acks what the primary wrote.
    b.clone_from(&ep_a).await.unwrap();
    assert_eq!(b.data_state().await, DataState::Standby);
    let mut b_server = b.start(Start::Replica(Some(&ep_a))).await.unwrap();
    assert_eq!(save_rules(&b).await, "");
    let mut writer = client(&a).await;
    for i in 0..100 {
        redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(format!("v{i}"))
            .query_async::<()>(&mut writer)
            .await
            .unwrap();
    }
    let seen = a.observe().await.unwrap();
    let (a_replica, a_pos) = (seen.replica, seen.position);
    assert!(!a_replica && a_pos > 0);
    // The replica may still be loading its first full resync.
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query_async(&mut writer).await.unwrap();
    assert_eq!(acked, 1, "the replica acked the writes");
    eventually("the replica's offset to reach the primary's", || async {
        b.observe().await.is_ok_and(|o| o.replica && o.streaming && o.position >= a_pos)
    })
    .await;
    assert_eq!(get(&b, "k99").await.as_deref(), Some("v99"));

    // A replica with no primary yet (its primary's Lease expired, say)
    // waits read-only, having kept nothing.
    c.clone_from(&ep_a).await.unwrap();
    let mut c_server = Some(c.start(Start::Replica(None)).await.unwrap());
    let waiting = c.observe().await.unwrap();
    assert_eq!((waiting.replica, waiting.position, waiting.streaming), (true, 0, false));
    assert!(c.call::<()>("SET", &["x", "y"]).await.is_err(), "a waiting replica takes no writes");
    c.repoint(&mut c_server, Some(&ep_a)).await.unwrap();
    eventually("the third member to copy the primary", || holds(&c, "k0", "v0")).await;

    // Detached, a replica stops receiving (the primary's WAIT gets no ack
    // from it) and keeps what it has, read-only.
    b.repoint(&mut Some(tokio::process::Command::new("true").spawn().unwrap()), None).await.unwrap();
    eventually("the detached replica's link to drop", || async {
        b.observe().await.is_ok_and(|o| o.replica && !o.streaming)
    })
    .await;
    let kept = b.observe().await.unwrap().position;
    redis::cmd("SET").arg("after-detach").arg("only-on-a").query_async::<()>(&mut writer).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&b, "after-detach").await, None, "a detached replica receives nothing");
    assert_eq!(b.observe().await.unwrap().position, kept);

    // Promotion: the replica takes writes and keeps its position.
    let b_pos = b.observe().await.unwrap().position;
    b.promote().await.unwrap();
    assert_eq!(b.data_state().await, DataState::Primary);
    let promoted = b.observe().await.unwrap();
    assert!(
        !promoted.replica && promoted.position >= b_pos,
        "promoted at {}, was {b_pos}",
        promoted.position
    );
    // Relaxed and back: min-replicas-to-write follows (the settings say 0 here).
    b.set_relaxed(true).await.unwrap();
    b.set_relaxed(false).await.unwrap();
    b.call::<()>("SET", &["after", "promotion"]).await.unwrap();

    // The third member follows the new primary without a restart.
    let c_pid = c_server.as_ref().and_then(|s| s.id());
    c.repoint(&mut c_server, Some(&ep_b)).await.unwrap();
    assert_eq!(c_server.as_ref().and_then(|s| s.id()), c_pid, "repointed in place");
    eventually("the third member to follow the new primary", || holds(&c, "after", "promotion")).await;

    // The old primary took a write nobody else has, then stops (saving it:
    // its settings ask for snapshots), rewinds and rejoins: the full resync
    // discards the diverged write and brings the new primary's.
    a.call::<()>("SET", &["diverged", "lost"]).await.unwrap();
    let a_final = a.observe().await.unwrap().position;
    let stopped_at = a.stop(&mut a_server).await.unwrap();
    assert_eq!(stopped_at, Some(a_final), "a clean stop says where the primary's writes ended");
    assert_eq!(a.data_state().await, DataState::Primary);
    a.rewind(&ep_b).await.unwrap();
    assert_eq!(a.data_state().await, DataState::Standby);
    let mut a_again = a.start(Start::Replica(Some(&ep_b))).await.unwrap();
    eventually("the old primary to copy the new one", || holds(&a, "after", "promotion")).await;
    assert_eq!(get(&a, "diverged").await, None);
    assert_eq!(get(&a, "k42").await.as_deref(), Some("v42"));

    a.stop(&mut a_again).await.unwrap();
    if let Some(mut server) = c_server.take() {
        c.stop(&mut server).await.unwrap();
    }
    b.stop(&mut b_server).await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

/// What a client over the network meets: TLS or nothing, and as the
/// application's user data commands only; a renewed certificate is served
/// without a restart while open connections go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_only_data_commands_only_and_a_renewed_certificate_loads_without_a_restart() {
    if server_bin().is_none() {
        eprintln!("skipped: no /usr/bin/redis-server (e2e/install-deps installs Debian's redis-server)");
        return;
    }
    let root = std::env::temp_dir().join(format!("hostwright-redis-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&root).unwrap();
    let (a, b) = (member(&root, "s-1", None), member(&root, "s-2", None));
    a.initialize().await.unwrap();
    let mut a_server = a.start(Start::Primary).await.unwrap();
    b.clone_from(&endpoint("s-1", &a)).await.unwrap();
    let mut b_server = b.start(Start::Replica(Some(&endpoint("s-1", &a)))).await.unwrap();

    assert!(plaintext(a.redis.port).await.is_err(), "a plaintext connection was answered");
    let port: (String, String) = a.call("CONFIG", &["GET", "port"]).await.unwrap();
    let tls_port: (String, String) = a.call("CONFIG", &["GET", "tls-port"]).await.unwrap();
    assert_eq!((port.1, tls_port.1), ("0".to_string(), a.redis.port.to_string()), "TLS is the only port");

    let mut app = client(&a).await;
    redis::cmd("SET").arg("session:1").arg("alice").query_async::<()>(&mut app).await.unwrap();
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query_async(&mut app).await.unwrap();
    assert_eq!(acked, 1, "the replica syncs over TLS as the replication user");
    for command in [
        &["CONFIG", "SET", "maxmemory", "1"][..],
        &["REPLICAOF", "127.0.0.1", "1"],
        &["SHUTDOWN"],
        &["ACL", "LIST"],
        &["FLUSHALL"],
    ] {
        let refused = redis::cmd(command[0]).arg(&command[1..]).query_async::<redis::Value>(&mut app).await;
        let error = refused.expect_err(&format!("the application's user ran {command:?}"));
        assert!(error.to_string().to_lowercase().contains("noperm"), "{command:?}: {error}");
    }
    assert!(client_as(&a, "default", "").await.is_err(), "the default user is off");
    assert!(client_as(&a, "replicator", "repl").await.is_ok_and(|_| true));

    let before: (String, String) = a.call("CONFIG", &["GET", "tls-cert-file"]).await.unwrap();
    let run_id = |info: String| info.lines().find(|l| l.starts_with("run_id:")).map(str::to_string);
    let started = run_id(a.call("INFO", &["server"]).await.unwrap());
    issue_certificates(&root);
    assert!(a.refresh_certificates().await.unwrap(), "a renewed certificate was installed");
    assert!(!a.refresh_certificates().await.unwrap(), "and only once");
    let after: (String, String) = a.call("CONFIG", &["GET", "tls-cert-file"]).await.unwrap();
    assert_ne!(before.1, after.1, "the server reads the renewed certificate");
    let mut fresh = client(&a).await;
    let value: String = redis::cmd("GET").arg("session:1").query_async(&mut fresh).await.unwrap();
    assert_eq!(value, "alice");
    redis::cmd("SET")
        .arg("session:2")
        .arg("bob")
        .query_async::<()>(&mut app)
        .await
        .expect("the open connection goes on");
    assert!(a_server.try_wait().unwrap().is_none(), "the server still runs");
    assert_eq!(run_id(a.call("INFO", &["server"]).await.unwrap()), started, "no restart");

    b.stop(&mut b_server).await.unwrap();
    a.stop(&mut a_server).await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

/// The figures the agent's metrics read move with the server: keys after
/// SETs, commands processed, a connected client, a replica's lag (none
/// once caught up), and a primary short of the replicas
/// `min-replicas-to-write` asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_figures_move_with_the_server() {
    if server_bin().is_none() {
        eprintln!("skipped: no /usr/bin/redis-server (e2e/install-deps installs Debian's redis-server)");
        return;
    }
    let root = std::env::temp_dir().join(format!("hostwright-redis-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&root).unwrap();
    let (a, b) = (member(&root, "s-1", None), member(&root, "s-2", None));
    a.initialize().await.unwrap();
    let mut a_server = a.start(Start::Primary).await.unwrap();
    b.clone_from(&endpoint("s-1", &a)).await.unwrap();
    let mut b_server = b.start(Start::Replica(Some(&endpoint("s-1", &a)))).await.unwrap();

    let before = a.stats().await.unwrap();
    let redis = before.redis.expect("Redis figures");
    assert_eq!(redis.keys, 0);
    assert!(redis.memory_bytes > 0);
    assert_eq!((before.lag_bytes, before.lag_seconds), (None, None), "a primary lags nobody");
    assert!(before.certificate_expiry.is_some(), "TLS is on");

    let mut writer = client(&a).await;
    for i in 0..10 {
        redis::cmd("SET").arg(format!("k{i}")).arg("v").query_async::<()>(&mut writer).await.unwrap();
    }
    let after = a.stats().await.unwrap();
    let redis = after.redis.unwrap();
    assert_eq!(redis.keys, 10);
    assert!(redis.clients >= 1, "the writer is connected: {after:?}");
    assert_eq!(after.connections, Some(redis.clients));
    assert!(after.commands >= before.commands.map(|n| n + 10), "{before:?} then {after:?}");

    eventually("the replica to hold every key, nothing pending", || async {
        b.stats().await.is_ok_and(|s| {
            s.redis.is_some_and(|r| r.keys == 10) && s.lag_bytes == Some(0) && s.lag_seconds == Some(0.0)
        })
    })
    .await;

    // One replica of the two asked for: writes would be refused.
    assert!(!a.stats().await.unwrap().short_of_replicas);
    a.call::<()>("CONFIG", &["SET", "min-replicas-to-write", "2"]).await.unwrap();
    eventually("the primary to be short of replicas", || async {
        a.stats().await.is_ok_and(|s| s.short_of_replicas)
    })
    .await;
    a.call::<()>("CONFIG", &["SET", "min-replicas-to-write", "1"]).await.unwrap();
    eventually("one replica to be enough", || async { a.stats().await.is_ok_and(|s| !s.short_of_replicas) })
        .await;

    drop(writer);
    b.stop(&mut b_server).await.unwrap();
    a.stop(&mut a_server).await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}
