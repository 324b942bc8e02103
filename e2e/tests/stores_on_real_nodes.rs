//! The stores in real containers on the real nodes of the local cluster:
//! PostgreSQL 15 and Redis 7 from images laid out as the official ones, the
//! agent installed by the init container, the kubelet probing it, and the
//! database written through its Service's virtual IP (kube-proxy) while
//! members crash and an agent freezes.
//!
//! The frozen agent is the case only a real kubelet covers: the agent *and*
//! its watchdog stop while PostgreSQL keeps running. The engine fails over
//! once the member's Lease is stale; the kubelet's liveness probe of the
//! agent then kills the old primary's container, server included.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hostwright::api::{DatabaseMirror, DatabaseMirrorSpec, SessionStore, SessionStoreSpec};
use hostwright::contract::probes;
use hostwright_e2e::database::{Credentials, Writer, all_healthy, connect_rw, current_primary, lost_writes};
use hostwright_e2e::operator::Operator;
use hostwright_e2e::sessions::Sessions;
use hostwright_e2e::testbed::Testbed;
use hostwright_e2e::{
    TestNamespace, client, container_processes, container_status, ensure_crds, eventually, kill_container,
    signal, wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

/// Generous: a restarted PostgreSQL container rewinds and catches up.
const TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_in_real_containers_survive_a_crash_and_a_frozen_agent() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::on_real_nodes(&client, "realstores").await?;
    let _operator = Operator::start(&client, &ns.name, "solo").await?;
    // Only the volumes: it leaves pods on real nodes to their kubelet.
    let root = std::env::temp_dir().join("hostwright-e2e").join(&ns.name);
    let volumes = Testbed::start(client.clone(), Some(ns.name.clone()), root).await?;
    let databases: Api<DatabaseMirror> = ns.api();
    let stores: Api<SessionStore> = ns.api();
    let pods: Api<Pod> = ns.api();
    let database: DatabaseMirrorSpec = serde_yaml::from_str(
        "instance: {image: 'hostwright.local/postgres:15', storage: {size: 1Gi}}\nmirrors: 1\nreplication: sync\n\
         failover: {delay: 1s}",
    )?;
    databases.create(&PostParams::default(), &DatabaseMirror::new("db", database)).await?;
    let sessions: SessionStoreSpec = serde_yaml::from_str(
        "image: 'hostwright.local/redis:7'\nreplicas: 2\ndurability: wait\nfailover: {delay: 1s}",
    )?;
    stores.create(&PostParams::default(), &SessionStore::new("sessions", sessions)).await?;
    let started = Instant::now();
    healthy_again(&databases, &pods, "db").await?;
    healthy_again(&stores, &pods, "sessions").await?;
    println!("both stores healthy in real containers after {:.1} s", started.elapsed().as_secs_f64());
    for member in ["db-1", "db-2", "sessions-1", "sessions-2"] {
        member_runs_as_built(&pods, member).await?;
    }

    // Rows through the Service's virtual IP, sessions confirmed by a replica.
    let creds = Credentials::read(&client, &ns.name, "db").await?;
    connect_rw(&client, &ns.name, "db", &creds)
        .await?
        .batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
        .await?;
    let rows =
        Writer::start_via_service_ip(client.clone(), ns.name.clone(), "db".into(), creds.clone(), "acked")
            .await?;
    let session_target = Sessions {
        client: client.clone(),
        namespace: ns.name.clone(),
        name: "sessions".into(),
        login: hostwright_e2e::sessions::login(&client, &ns.name, "sessions").await?,
        confirm: true,
    };
    let session_writer = Writer::run(session_target.clone());
    eventually(TIMEOUT, "rows and sessions confirmed", || async {
        Ok((rows.acked().len() > 50 && session_writer.acked().len() > 50).then_some(()))
    })
    .await?;

    // 1. The database primary's container crashes (every process SIGKILLed).
    let primary = primary_of(&databases, "db").await?;
    let crashed = Instant::now();
    let killed = kill_container(&container_id(&pods, &primary, "postgres").await?)?;
    let resumed = writes_resume(&rows, crashed).await?;
    println!("crash of {primary}'s container ({killed} processes): writes resumed after {resumed:.2} s");
    healthy_again(&databases, &pods, "db").await?;

    // 2. The (new) primary's agent and watchdog freeze; PostgreSQL runs on.
    let primary = primary_of(&databases, "db").await?;
    let restarts = container_status(&pods, &primary, "postgres").await?.restart_count;
    let processes = container_processes(&container_id(&pods, &primary, "postgres").await?)?;
    let (agents, servers): (Vec<_>, Vec<_>) =
        processes.iter().partition(|(_, cmdline)| cmdline.starts_with("/controller/hostwright"));
    ensure!(agents.len() == 2, "the agent and its watchdog in {primary}: {processes:?}");
    ensure!(!servers.is_empty(), "PostgreSQL in {primary}: {processes:?}");
    let frozen = Instant::now();
    for (pid, _) in &agents {
        signal(*pid, libc::SIGSTOP)?;
    }
    let resumed = writes_resume(&rows, frozen).await?;
    eventually(TIMEOUT, "the kubelet to restart the frozen agent's container", || async {
        let status = container_status(&pods, &primary, "postgres").await?;
        Ok((status.restart_count > restarts).then_some(()))
    })
    .await?;
    let restarted = frozen.elapsed().as_secs_f64();
    for (pid, cmdline) in &servers {
        ensure!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{cmdline} ({pid}) outlived its container"
        );
    }
    println!(
        "agent and watchdog of {primary} frozen: writes resumed on the other member after {resumed:.2} s \
         (sync replication: its commits wait until a mirror streams, here the frozen member once restarted); \
         the liveness probe had the container restarted after {restarted:.1} s (killed within {} s)",
        probes::PERIOD_SECONDS * probes::FAILURE_THRESHOLD
            + probes::TIMEOUT_SECONDS
            + probes::LIVENESS_GRACE_SECONDS as i32
    );
    healthy_again(&databases, &pods, "db").await?;

    // 3. The session store's primary crashes.
    let primary = primary_of(&stores, "sessions").await?;
    let crashed = Instant::now();
    kill_container(&container_id(&pods, &primary, "redis").await?)?;
    let resumed = writes_resume(&session_writer, crashed).await?;
    println!("crash of {primary}'s container: sessions confirmed again after {resumed:.2} s");
    healthy_again(&stores, &pods, "sessions").await?;

    // Nothing confirmed was lost.
    let acked = rows.stop().await;
    let lost = lost_writes(&client, &ns.name, "db", &creds, "acked", &acked).await?;
    let confirmed = session_writer.stop().await;
    let lost_sessions = session_target.lost(&confirmed).await?;
    println!(
        "{} of {} acknowledged rows lost; {} of {} confirmed sessions lost",
        lost.len(),
        acked.len(),
        lost_sessions.len(),
        confirmed.len()
    );
    ensure!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    ensure!(lost_sessions.is_empty(), "confirmed sessions lost: {lost_sessions:?}");
    volumes.stop().await?;
    Ok(())
}

/// The member pod as the operator built it ran in a real container: the
/// agent installed by the init container, the server's user of the official
/// image, ready by the kubelet's probe.
async fn member_runs_as_built(pods: &Api<Pod>, member: &str) -> Result<()> {
    let pod = pods.get(member).await?;
    let status = pod.status.as_ref().context("a pod status")?;
    let init =
        status.init_container_statuses.iter().flatten().next().context("the init container's status")?;
    let finished = init.state.as_ref().and_then(|s| s.terminated.as_ref()).context("the agent installed")?;
    ensure!(finished.exit_code == 0, "{member}: installing the agent exited {}", finished.exit_code);
    let server = status.container_statuses.iter().flatten().next().context("the server's status")?;
    ensure!(server.ready, "{member}: the server container is not ready");
    let id = server.container_id.as_deref().context("a container id")?;
    let processes = container_processes(id)?;
    for (pid, cmdline) in &processes {
        // A process listed a moment ago may have exited since (the server
        // forks a backend per connection, and the agent connects every
        // tick): gone, it runs as nobody.
        let status = match std::fs::read_to_string(format!("/proc/{pid}/status")) {
            Ok(status) => status,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err.into()),
        };
        let uid = status
            .lines()
            .find_map(|l| {
                l.strip_prefix("Uid:").map(|u| u.split_whitespace().next().unwrap_or("").to_string())
            })
            .unwrap_or_default();
        ensure!(uid == "999", "{member}: {cmdline} runs as uid {uid}, not the image's 999");
    }
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    println!("{member} on {node}: {} processes as uid 999, ready", processes.len());
    Ok(())
}

async fn container_id(pods: &Api<Pod>, member: &str, container: &str) -> Result<String> {
    container_status(pods, member, container).await?.container_id.context("a container id")
}

async fn primary_of<K>(api: &Api<K>, name: &str) -> Result<String>
where
    K: hostwright::controllers::members::Replicated,
{
    current_primary(&api.get(name).await?).context("a current primary")
}

/// Seconds from `since` until the writer's first write on a connection
/// opened after `since` was confirmed.
async fn writes_resume(writer: &Writer, since: Instant) -> Result<f64> {
    let at =
        eventually(TIMEOUT, "writes to resume", || async { Ok(writer.first_ack_reconnected_after(since)) })
            .await?;
    Ok(at.duration_since(since).as_secs_f64())
}

/// Every member healthy (again), each container ready by the kubelet's probe.
async fn healthy_again<K>(api: &Api<K>, pods: &Api<Pod>, name: &str) -> Result<()>
where
    K: hostwright::controllers::members::Replicated,
{
    wait_for(api, name, TIMEOUT, "every member healthy again", |o: Option<&K>| o.is_some_and(all_healthy))
        .await?;
    eventually(TIMEOUT, "every member's container ready", || async {
        let list = pods
            .list(&kube::api::ListParams::default().labels(&format!("app.kubernetes.io/instance={name}")))
            .await?;
        let ready = list.items.iter().all(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| cs.iter().all(|c| c.ready))
        });
        Ok(ready.then_some(()))
    })
    .await?;
    Ok(())
}
