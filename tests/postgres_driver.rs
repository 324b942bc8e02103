//! The agent's PostgreSQL driver against real PostgreSQL servers (Debian's
//! postgresql-15, installed by `make deps`): bootstrap a primary, clone a
//! mirror that streams, crash the primary, promote the mirror, rewind the old
//! primary and let it rejoin as a mirror of the new one. Every member runs
//! with TLS, as in a pod: certificates from the store's own CA.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hostwright::agent::certificates::Certificates;
use hostwright::agent::postgres::{Access, Bootstrap, Postgres, StartAs};
use hostwright::contract::keys::tls as tls_files;

/// The names the test servers' certificates carry.
const SERVER_NAME: &str = "shop-db-rw.customer-a.svc";

fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("HOSTWRIGHT_PG_BIN")
        .map_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"), PathBuf::from);
    assert!(
        dir.join("postgres").exists(),
        "PostgreSQL 15 not found in {} (make deps installs it)",
        dir.display()
    );
    dir
}

/// PostgreSQL refuses to run as root: as root, run the servers as `postgres`.
fn run_as() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = std::process::Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    let me = std::process::Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    Some((id("-u").expect("a postgres user (Debian's package creates it)"), id("-g")?))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The store's certificates in `<root>/tls` (see [`common::issue_certificates`]).
fn issue_certificates(root: &Path) -> String {
    common::issue_certificates(root, SERVER_NAME)
}

/// How a mirror reaches the primary at `port` (as the agent does).
async fn conninfo_to(mirror: &Postgres, port: u16, password: &str) -> String {
    mirror.conninfo_to("127.0.0.1", port, password).await.unwrap()
}

fn member(root: &Path, name: &str) -> Postgres {
    if !root.join("tls").exists() {
        issue_certificates(root);
    }
    let dir = root.join(name);
    let socket = root.join(format!("{name}-run"));
    let owner = run_as();
    for d in [&dir, &socket] {
        std::fs::create_dir_all(d).unwrap();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
        }
    }
    Postgres {
        bin_dir: bin_dir(),
        data_dir: dir.join("pgdata"),
        socket_dir: socket,
        listen_address: "127.0.0.1".into(),
        port: free_port(),
        settings_file: None,
        reloaded: Default::default(),
        application_name: name.replace('-', "_"),
        run_as: owner,
        access: Access { database: "shop".into(), owner: "shop".into() },
        tls: Some(Certificates::new(root.join("tls"), socket_dir(root, name), owner)),
        archiving: None,
        recovery: None,
    }
}

fn socket_dir(root: &Path, name: &str) -> PathBuf {
    root.join(format!("{name}-run"))
}

/// The passwords and database every test initialises its primary with.
fn bootstrap() -> Bootstrap {
    Bootstrap {
        superuser_password: "su".into(),
        replication_password: "repl".into(),
        database: "shop".into(),
        owner: "shop".into(),
        owner_password: "shop".into(),
    }
}

fn temp_root() -> PathBuf {
    let root = std::env::temp_dir().join(format!("hostwright-pg-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&root).unwrap();
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(&root, Some(uid), Some(gid)).unwrap();
    }
    root
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_stream_crash_promote_rewind_rejoin() {
    let root = temp_root();
    let (a, b) = (member(&root, "db-1"), member(&root, "db-2"));
    let bootstrap = Bootstrap {
        superuser_password: "su-secret".into(),
        replication_password: "repl-secret".into(),
        database: "shop".into(),
        owner: "shop".into(),
        owner_password: "shop-secret".into(),
    };

    a.initdb(&bootstrap).await.unwrap();
    assert!(a.initialized());
    let mut a_server = a.start(&StartAs::Primary).await.unwrap();
    let conninfo_a = conninfo_to(&b, a.port, &bootstrap.replication_password).await;
    a.connect()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1);")
        .await
        .unwrap();

    // A mirror cloned from the primary streams from it.
    b.basebackup(&conninfo_a).await.unwrap();
    let mut b_server = b.start(&StartAs::Standby { primary_conninfo: conninfo_a.clone() }).await.unwrap();
    a.connect().await.unwrap().batch_execute("INSERT INTO t VALUES (2);").await.unwrap();
    let primary = a.observe().await.unwrap();
    assert!(!primary.replica);
    wait_until("the mirror to catch up", || async {
        b.observe().await.is_ok_and(|o| o.replica && o.streaming && o.position >= primary.position)
    })
    .await;

    // The primary crashes (kill -9); the mirror is promoted and takes writes.
    a_server.kill().await.unwrap();
    b.promote().await.unwrap();
    assert!(!b.observe().await.unwrap().replica, "promoted");
    let new_primary = b.connect().await.unwrap();
    new_primary.batch_execute("INSERT INTO t VALUES (3);").await.unwrap();
    let count: i64 = new_primary.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(count, 3, "every write made before the crash was streamed");

    // The old primary rewinds onto the new history and rejoins as a mirror.
    let conninfo_b = conninfo_to(&a, b.port, &bootstrap.replication_password).await;
    a.rewind(&conninfo_b).await.unwrap();
    let mut a_again = a.start(&StartAs::Standby { primary_conninfo: conninfo_b }).await.unwrap();
    let b_pos = b.observe().await.unwrap().position;
    wait_until("the old primary to follow", || async {
        a.observe().await.is_ok_and(|o| o.replica && o.position >= b_pos)
    })
    .await;
    let seen: i64 = a.connect().await.unwrap().query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(seen, 3);

    a.stop(&mut a_again).await.unwrap();
    let last = b.observe().await.unwrap().position;
    let stopped_at = b.stop(&mut b_server).await.unwrap();
    assert!(
        stopped_at.is_some_and(|p| p >= last),
        "a clean stop says where WAL ends: {stopped_at:?} vs {last}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// With synchronous commits: a mirror told to detach stops acknowledging at
/// once (so a primary that is still alive cannot gather acknowledgements a
/// new primary would lack); a relaxed primary commits without a mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_mirror_acknowledges_nothing_and_a_relaxed_primary_needs_none() {
    let root = temp_root();
    let settings = root.join("sync.conf");
    std::fs::write(&settings, "synchronous_standby_names = 'ANY 1 (db_2)'\nsynchronous_commit = on\n")
        .unwrap();
    let (mut a, b) = (member(&root, "db-1"), member(&root, "db-2"));
    a.settings_file = Some(settings);
    let bootstrap = bootstrap();
    a.initdb(&bootstrap).await.unwrap();
    let mut a_server = a.start(&StartAs::Primary).await.unwrap();
    let conninfo = conninfo_to(&b, a.port, "repl").await;
    b.basebackup(&conninfo).await.unwrap();
    let mut b_server = b.start(&StartAs::Standby { primary_conninfo: conninfo.clone() }).await.unwrap();
    wait_until("the mirror to stream", || async { b.observe().await.is_ok_and(|o| o.streaming) }).await;
    let db = a.connect().await.unwrap();
    db.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)").await.unwrap();

    // Detached: the WAL receiver stops; a commit on the primary waits.
    b.reconfigure(&StartAs::Standby { primary_conninfo: String::new() }, false).await.unwrap();
    wait_until("the mirror to stop receiving", || async { b.observe().await.is_ok_and(|o| !o.streaming) })
        .await;
    let blocked =
        tokio::time::timeout(Duration::from_millis(1_500), db.batch_execute("INSERT INTO t VALUES (2)"))
            .await;
    assert!(blocked.is_err(), "a commit was acknowledged with the only mirror detached");

    // Relaxed, the primary commits alone (the waiting commit returns too).
    a.reconfigure(&StartAs::Primary, true).await.unwrap();
    let db2 = a.connect().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), db2.batch_execute("INSERT INTO t VALUES (3)"))
        .await
        .expect("a relaxed primary commits without a mirror")
        .unwrap();
    a.reconfigure(&StartAs::Primary, false).await.unwrap();

    // Repointed by a reload, the mirror streams again and commits go through.
    b.reconfigure(&StartAs::Standby { primary_conninfo: conninfo }, false).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), db2.batch_execute("INSERT INTO t VALUES (4)"))
        .await
        .expect("the mirror acknowledges again once repointed")
        .unwrap();

    drop((db, db2));
    b.stop(&mut b_server).await.unwrap();
    a.stop(&mut a_server).await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

/// Settings a reload applies are loaded into the running server and kept
/// for its next start; a value it cannot parse, or a setting only a restart
/// applies, is refused and put back, so no later restart picks it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloadable_settings_load_without_a_restart_and_refused_ones_are_not_kept() {
    let root = temp_root();
    let file = |name: &str, text: &str| {
        let path = root.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let first = file("postgresql-1.conf", "work_mem = '4MB'\n");
    let mut a = member(&root, "db-1");
    a.settings_file = Some(first);
    let bootstrap = bootstrap();
    a.initdb(&bootstrap).await.unwrap();
    let mut server = a.start(&StartAs::Primary).await.unwrap();
    let query = |sql: String| {
        let a = a.clone();
        async move { a.connect().await.unwrap().query_one(&sql, &[]).await.unwrap().get::<_, String>(0) }
    };
    let show = |name: &str| query(format!("SHOW {name}"));
    let started = query("SELECT pg_postmaster_start_time()::text".into()).await;
    assert_eq!(show("work_mem").await, "4MB");

    let second = file("postgresql-2.conf", "work_mem = '8MB'\n");
    assert_eq!(a.reload_settings(&second).await.unwrap(), Ok(()));
    assert_eq!(show("work_mem").await, "8MB");

    let invalid = file("postgresql-3.conf", "work_mem = 'banana'\n");
    let refused = a.reload_settings(&invalid).await.unwrap().unwrap_err();
    assert!(refused.contains("work_mem"), "{refused}");
    assert_eq!(show("work_mem").await, "8MB");

    let restart_only = file("postgresql-4.conf", "work_mem = '8MB'\nmax_connections = '150'\n");
    let refused = a.reload_settings(&restart_only).await.unwrap().unwrap_err();
    assert!(refused.contains("max_connections"), "{refused}");
    let same = query("SELECT pg_postmaster_start_time()::text".into()).await;
    assert_eq!(same, started, "no restart happened");

    // The next start runs the reloaded settings, not the refused ones.
    a.stop(&mut server).await.unwrap();
    let mut server = a.start(&StartAs::Primary).await.unwrap();
    assert_eq!(show("work_mem").await, "8MB");
    assert_eq!(show("max_connections").await, "100");
    a.stop(&mut server).await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

/// What a client over the network meets: TLS or nothing, the application's
/// user in its own database alone, and a renewed certificate served
/// without a restart while connections already open go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_mirrors_use_tls_and_a_renewed_certificate_loads_without_a_restart() {
    let root = temp_root();
    let ca = issue_certificates(&root);
    let (a, b) = (member(&root, "db-1"), member(&root, "db-2"));
    let bootstrap = bootstrap();
    a.initdb(&bootstrap).await.unwrap();
    let mut a_server = a.start(&StartAs::Primary).await.unwrap();
    let conninfo = conninfo_to(&b, a.port, &bootstrap.replication_password).await;
    b.basebackup(&conninfo).await.unwrap();
    let mut b_server = b.start(&StartAs::Standby { primary_conninfo: conninfo }).await.unwrap();
    wait_until("the mirror to stream", || async { b.observe().await.is_ok_and(|o| o.streaming) }).await;

    let client = |user: &str, password: &str, db: &str| {
        let mut config = tokio_postgres::Config::new();
        config.host(SERVER_NAME).hostaddr([127, 0, 0, 1].into()).port(a.port).user(user).password(password);
        config.dbname(db).connect_timeout(Duration::from_secs(2));
        config
    };
    let tls = || hostwright::tls::client::postgres(&ca).unwrap();
    let app = client("shop", "shop", "shop");

    // Plaintext is refused; TLS verified against the store's CA is not.
    let mut plain = app.clone();
    plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let refused =
        plain.connect(tokio_postgres::NoTls).await.err().expect("a plaintext connection was accepted");
    let reason = refused.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(reason.contains("no encryption"), "{refused:?}");
    let (db, connection) = app.connect(tls()).await.expect("the application connects over TLS");
    tokio::spawn(connection);
    let ssl: bool =
        db.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0);
    assert!(ssl, "the client's own connection is TLS");
    let superuser = a.connect().await.unwrap();
    let replication_tls: bool = superuser
        .query_one("SELECT bool_and(s.ssl) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(replication_tls, "the mirror streams over TLS");

    // The application's user: its own database only, no roles, no superuser over the network.
    for (user, password, database) in [("shop", "shop", "postgres"), ("postgres", "su", "postgres")] {
        let refused = client(user, password, database).connect(tls()).await;
        assert!(refused.is_err(), "{user} reached database {database} over the network");
    }
    let create_role = db.batch_execute("CREATE ROLE intruder LOGIN").await;
    assert!(create_role.is_err(), "the application's user created a role");

    // A renewed certificate: installed and loaded with no restart.
    let serial = || async {
        let (c, conn) = app.connect(tls()).await.unwrap();
        tokio::spawn(conn);
        let started: String =
            c.query_one("SELECT pg_postmaster_start_time()::text", &[]).await.unwrap().get(0);
        started
    };
    let started = serial().await;
    let before = std::fs::read_to_string(root.join("tls").join(tls_files::CERT)).unwrap();
    issue_certificates(&root);
    assert!(a.refresh_certificates().await.unwrap(), "a renewed certificate was installed");
    assert!(!a.refresh_certificates().await.unwrap(), "and only once");
    let installed = a.tls.as_ref().unwrap().installed().unwrap();
    assert_ne!(std::fs::read_to_string(&installed.cert).unwrap(), before);
    assert_eq!(serial().await, started, "no restart");
    db.batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (1)")
        .await
        .expect("the open connection goes on");

    drop((db, superuser));
    b.stop(&mut b_server).await.unwrap();
    a.stop(&mut a_server).await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

/// A superuser connection over the socket to the clients' database `shop`
/// (the agent's own queries run in `postgres`, which commits leave out).
async fn shop_database(pg: &Postgres) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config.host_path(&pg.socket_dir).port(pg.port).user("postgres").dbname("shop");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The figures the agent's metrics read move with the server: commits rise
/// with a committed insert, a client connection is counted while open, a
/// mirror reports its lag (none once caught up), and a primary whose
/// commits wait for a synchronous standby it lacks says so until one
/// streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_figures_move_with_the_server() {
    let root = temp_root();
    let settings = root.join("sync.conf");
    std::fs::write(&settings, "synchronous_standby_names = 'ANY 1 (db_2)'\nsynchronous_commit = on\n")
        .unwrap();
    let (mut a, b) = (member(&root, "db-1"), member(&root, "db-2"));
    a.settings_file = Some(settings);
    a.initdb(&bootstrap()).await.unwrap();
    let mut a_server = a.start(&StartAs::Primary).await.unwrap();

    let alone = a.stats().await.unwrap();
    assert!(alone.short_of_replicas, "commits wait for db_2, which is not there");
    assert_eq!((alone.lag_bytes, alone.lag_seconds), (None, None), "a primary lags nobody");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let expiry = alone.certificate_expiry.expect("the served certificate's expiry");
    assert!(expiry > now + 3600, "expires at {expiry}, now {now}");

    let conninfo = conninfo_to(&b, a.port, "repl").await;
    b.basebackup(&conninfo).await.unwrap();
    let mut b_server = b.start(&StartAs::Standby { primary_conninfo: conninfo }).await.unwrap();
    wait_until("the mirror to count for commits", || async {
        a.stats().await.is_ok_and(|s| !s.short_of_replicas)
    })
    .await;

    // A committed insert in the clients' database is counted.
    let commits = a.stats().await.unwrap().commits.expect("commits");
    let client = shop_database(&a).await;
    wait_until("the open connection to be counted", || async {
        a.stats().await.is_ok_and(|s| s.connections >= Some(1))
    })
    .await;
    client.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)").await.unwrap();
    drop(client);
    wait_until("the commits to be counted", || async {
        a.stats().await.is_ok_and(|s| s.commits.is_some_and(|c| c > commits))
    })
    .await;
    wait_until("the closed connection to go", || async {
        a.stats().await.is_ok_and(|s| s.connections == Some(0))
    })
    .await;

    // The mirror reports its lag, none once it replayed everything.
    let mirror = b.stats().await.unwrap();
    assert!(mirror.lag_bytes.is_some(), "{mirror:?}");
    assert!(!mirror.short_of_replicas, "a mirror takes no writes");
    let end = a.observe().await.unwrap().position;
    wait_until("the mirror to replay everything", || async {
        b.observe().await.is_ok_and(|o| o.position >= end)
            && b.stats().await.is_ok_and(|s| s.lag_bytes == Some(0) && s.lag_seconds == Some(0.0))
    })
    .await;

    b.stop(&mut b_server).await.unwrap();
    a.stop(&mut a_server).await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}
