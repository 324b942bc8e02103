//! `hostwright agent` against the real API server and real PostgreSQL 15:
//! the test plays the failover engine (it writes the instructions on the
//! pods), two agents carry them out and report through their Leases.
//! Bootstrap, mirror, crash of the primary's server, fence, promotion,
//! rewind and rejoin — with every committed row still there.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hostwright::contract::{Desired, Instruction, Report, ServerRole, decode_report, keys};
use hostwright_e2e::{TestNamespace, client, eventually};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

struct Member {
    port: u16,
    data_dir: PathBuf,
    agent: Child,
}

impl Drop for Member {
    fn drop(&mut self) {
        // SIGTERM lets the agent stop its server cleanly.
        let _ = Command::new("kill").args(["-TERM", &self.agent.id().to_string()]).status();
        let _ = self.agent.wait();
    }
}

fn postgres_ids() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output()?;
        String::from_utf8(out.stdout)?.trim().parse().context("a postgres user (make deps)")
    };
    Ok((id("-u")?, id("-g")?))
}

fn owned_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)?;
    let (uid, gid) = postgres_ids()?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_agent(root: &Path, namespace: &str, name: &str) -> Result<Member> {
    let dir = root.join(name);
    let (socket, data) = (dir.join("run"), dir.join("data"));
    owned_dir(&dir)?;
    owned_dir(&socket)?;
    owned_dir(&data)?;
    let port = free_port()?;
    let log = std::fs::File::create(root.join(format!("{name}.log")))?;
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/hostwright");
    let agent = Command::new(bin)
        .args(["agent", "run", "--member", name, "--namespace", namespace])
        .arg("--data-dir")
        .arg(data.join("pgdata"))
        .arg("--socket-dir")
        .arg(&socket)
        .args([
            "--listen-address",
            "127.0.0.1",
            "--advertise-address",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            // Two agents on one machine: each answers probes on a port of its own.
            "--probe-address",
            &format!("127.0.0.1:{}", free_port()?),
        ])
        .arg("--credentials-dir")
        .arg(root.join("credentials"))
        .args(["--run-as-user", "postgres"])
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting hostwright agent (cargo build first)")?;
    Ok(Member { port, data_dir: data.join("pgdata"), agent })
}

/// Write `desired` (with `upstream`) at `epoch` on a member's pod, as the engine would.
async fn instruct(pods: &Api<Pod>, member: &str, desired: Desired, upstream: &str, epoch: u64) -> Result<()> {
    let instruction = Instruction { initialize: epoch == 1, ..Instruction::new(desired, epoch) }
        .upstream(Some(upstream.to_string()).filter(|u| !u.is_empty()));
    let patch = json!({"metadata": {"annotations": { keys::INSTRUCTION_ANNOTATION: instruction.encode() }}});
    pods.patch(member, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

async fn wait_report(
    leases: &Api<Lease>,
    member: &str,
    what: &str,
    ok: impl Fn(&Report) -> bool,
) -> Result<Report> {
    eventually(TIMEOUT, what, || async {
        let Some(lease) = leases.get_opt(member).await? else { return Ok(None) };
        let reported = lease.metadata.annotations.as_ref().and_then(decode_report);
        Ok(reported.map(|(r, _)| r).filter(|r| ok(r)))
    })
    .await
}

async fn sql(port: u16, statement: &str) -> Result<Vec<tokio_postgres::Row>> {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=shop password=shop-secret dbname=shop connect_timeout=3"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    Ok(client.query(statement, &[]).await?)
}

/// The startup (recovery) process of the standby whose cluster_name is `cluster`.
fn startup_pid(cluster: &str) -> Result<u32> {
    let out = Command::new("pgrep").args(["-f", &format!("postgres: {cluster}: startup")]).output()?;
    let text = String::from_utf8(out.stdout)?;
    text.lines().next().context("a startup process")?.trim().parse().context("pid")
}

fn stop_process(pid: u32, signal: libc::c_int) -> Result<()> {
    hostwright_e2e::signal(pid, signal).with_context(|| format!("signalling {pid}"))
}

fn postmaster_pid(data_dir: &Path) -> Result<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid"))?;
    text.lines().next().context("empty postmaster.pid")?.trim().parse().context("postmaster pid")
}

#[tokio::test]
async fn agents_bootstrap_mirror_promote_and_rejoin_on_instruction() -> Result<()> {
    if !Path::new("/usr/lib/postgresql/15/bin/postgres").exists() {
        bail!("PostgreSQL 15 is not installed (make deps)");
    }
    let client = client().await?;
    let ns = TestNamespace::create(&client, "agent", &[]).await?;
    let pods: Api<Pod> = ns.api();
    let leases: Api<Lease> = ns.api();
    for name in ["db-1", "db-2"] {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "postgres", "image": "postgres:15"}]},
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    let root = std::env::temp_dir().join(format!("hostwright-agent-{}", ns.name));
    owned_dir(&root)?;
    std::fs::create_dir_all(root.join("credentials"))?;
    for (key, value) in [
        ("username", "shop"),
        ("password", "shop-secret"),
        ("database", "shop"),
        ("replication-password", "repl-secret"),
        ("superuser-password", "su-secret"),
    ] {
        std::fs::write(root.join("credentials").join(key), value)?;
    }
    let one = start_agent(&root, &ns.name, "db-1")?;
    let two = start_agent(&root, &ns.name, "db-2")?;

    // Bootstrap: db-1 primary, db-2 a mirror cloned from it.
    instruct(&pods, "db-1", Desired::Primary, "", 1).await?;
    wait_report(&leases, "db-1", "db-1 primary", |r| r.role == ServerRole::Primary).await?;
    sql(one.port, "CREATE TABLE orders (id int)").await?;
    sql(one.port, "INSERT INTO orders SELECT generate_series(1, 100)").await?;
    instruct(&pods, "db-2", Desired::Mirror, "db-1", 1).await?;
    let primary = wait_report(&leases, "db-1", "db-1 position", |r| r.position.is_some()).await?;
    let target = primary.position.unwrap_or_default();
    wait_report(&leases, "db-2", "db-2 streaming", |r| {
        r.role == ServerRole::Mirror
            && r.streaming_from.as_deref() == Some("db-1")
            && r.position.unwrap_or(0) >= target
    })
    .await?;

    // The primary's server dies (kill -9); its agent reports it stopped.
    let pid = postmaster_pid(&one.data_dir)?;
    Command::new("kill").args(["-KILL", &pid.to_string()]).status()?;
    wait_report(&leases, "db-1", "db-1 stopped", |r| r.role == ServerRole::Stopped).await?;

    // The agent does not bring its primary back on the same instruction.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = wait_report(&leases, "db-1", "db-1's report", |_| true).await?;
    assert_eq!(still.role, ServerRole::Stopped, "a crashed primary waits for a newer instruction");

    // Fence db-1 (epoch 2), detach db-2, then promote db-2 (epoch 3).
    instruct(&pods, "db-1", Desired::Fenced, "", 2).await?;
    instruct(&pods, "db-2", Desired::Mirror, "", 2).await?;
    wait_report(&leases, "db-1", "db-1 fenced", |r| {
        r.acting_on == Desired::Fenced && r.epoch == 2 && r.role != ServerRole::Primary
    })
    .await?;
    wait_report(&leases, "db-2", "db-2 detached", |r| r.epoch == 2 && r.streaming_from.is_none()).await?;
    // The promotion is a long step: with db-2's startup process frozen,
    // pg_promote() waits (for 10 s, more than the lease) while the server
    // answers. The Lease is renewed all along, so the engine never takes a
    // slow promotion for a lost member.
    let startup = startup_pid("db_2")?;
    stop_process(startup, libc::SIGSTOP)?;
    instruct(&pods, "db-2", Desired::Primary, "", 3).await?;
    instruct(&pods, "db-1", Desired::Fenced, "", 3).await?;
    let renewed = |lease: &Lease| lease.spec.as_ref().and_then(|s| s.renew_time.clone()).map(|t| t.0);
    let first = renewed(&leases.get("db-2").await?);
    let mut renewals = std::collections::BTreeSet::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        renewals.extend(renewed(&leases.get("db-2").await?));
    }
    stop_process(startup, libc::SIGCONT)?;
    assert!(
        renewals.len() >= 5 && renewals.iter().next_back() > first.as_ref(),
        "renewals during the step: {renewals:?}"
    );
    wait_report(&leases, "db-2", "db-2 promoted", |r| r.role == ServerRole::Primary).await?;

    // An instruction older than one seen (a former leader resuming) is ignored.
    instruct(&pods, "db-1", Desired::Primary, "", 1).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ignored = wait_report(&leases, "db-1", "db-1's report", |_| true).await?;
    assert_eq!((ignored.role, ignored.epoch), (ServerRole::Stopped, 3), "a stale instruction was acted on");
    sql(two.port, "INSERT INTO orders SELECT generate_series(101, 150)").await?;

    // The old primary rewinds and rejoins as a mirror of db-2.
    instruct(&pods, "db-1", Desired::Mirror, "db-2", 4).await?;
    let new_primary = wait_report(&leases, "db-2", "db-2 position", |r| r.position.is_some()).await?;
    let target = new_primary.position.unwrap_or_default();
    wait_report(&leases, "db-1", "db-1 rejoined", |r| {
        r.role == ServerRole::Mirror && r.position.unwrap_or(0) >= target
    })
    .await?;
    let rows = sql(one.port, "SELECT count(*) FROM orders").await?;
    let count: i64 = rows[0].get(0);
    assert_eq!(count, 150, "every committed row is on the rejoined mirror");
    drop((one, two));
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
