//! The agent's PostgreSQL driver against real PostgreSQL servers (Debian's
//! postgresql-15, installed by `make deps`): bootstrap a primary, clone a
//! mirror that streams, crash the primary, promote the mirror, rewind the old
//! primary and let it rejoin as a mirror of the new one.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hostwright::agent::postgres::{Bootstrap, Postgres, StartAs, replication_conninfo};

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

fn member(root: &Path, name: &str) -> Postgres {
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
        application_name: name.replace('-', "_"),
        run_as: owner,
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
    let conninfo_a = replication_conninfo("127.0.0.1", a.port, &bootstrap.replication_password, "db_2");
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
    let (primary_in_recovery, primary_pos) = a.position().await.unwrap();
    assert!(!primary_in_recovery);
    wait_until("the mirror to catch up", || async {
        b.position().await.is_ok_and(|(r, p)| r && p >= primary_pos)
    })
    .await;

    // The primary crashes (kill -9); the mirror is promoted and takes writes.
    a_server.kill().await.unwrap();
    b.promote().await.unwrap();
    let (b_in_recovery, _) = b.position().await.unwrap();
    assert!(!b_in_recovery, "promoted");
    let new_primary = b.connect().await.unwrap();
    new_primary.batch_execute("INSERT INTO t VALUES (3);").await.unwrap();
    let count: i64 = new_primary.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(count, 3, "every write made before the crash was streamed");

    // The old primary rewinds onto the new history and rejoins as a mirror.
    let conninfo_b = replication_conninfo("127.0.0.1", b.port, &bootstrap.replication_password, "db_1");
    a.rewind(&conninfo_b).await.unwrap();
    let mut a_again = a.start(&StartAs::Standby { primary_conninfo: conninfo_b }).await.unwrap();
    let (_, b_pos) = b.position().await.unwrap();
    wait_until("the old primary to follow", || async {
        a.position().await.is_ok_and(|(r, p)| r && p >= b_pos)
    })
    .await;
    let seen: i64 = a.connect().await.unwrap().query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(seen, 3);

    a.stop(&mut a_again).await.unwrap();
    b.stop(&mut b_server).await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}
