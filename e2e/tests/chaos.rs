//! Faults a hosting company meets, injected into DatabaseMirrors on real
//! PostgreSQL 15 behind real agents, each scenario asserting the guarantee
//! itself: acknowledged writes lost, moments two members took writes, an
//! empty or stale member made primary, an operator taken down.
//!
//! A writer inserts numbered rows through `<name>-rw` and records every
//! acknowledgement; a probe writes (with `synchronous_commit = local`) on
//! every member directly, so any moment two members accept writes shows.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hostwright::api::DatabaseMirror;
use hostwright::api::common::condition_type::{DEGRADED, PROGRESSING, READY};
use hostwright::contract::keys::INSTRUCTION_ANNOTATION;
use hostwright::contract::{Instruction, decode_report};
use hostwright_e2e::database::{SplitBrainProbe, all_healthy, current_primary};
use hostwright_e2e::site::{SERIAL, Site, TIMEOUT, condition, failovers, ready_reason};
use hostwright_e2e::trials::{Loss, TrialReport, failover_trials, summary};
use hostwright_e2e::{eventually, wait_deleted};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

/// Trials of each timing-dependent scenario.
fn trials() -> usize {
    std::env::var("HOSTWRIGHT_E2E_CHAOS_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(10)
}

fn print_report(report: &TrialReport) {
    for t in &report.trials {
        println!(
            "{} of {}: fenced after {}, writes resumed on {} after {:.2} s, reported loss bound {:?} bytes",
            t.loss,
            t.old_primary,
            t.fenced_after.map_or("-".into(), |f| format!("{f:.2} s")),
            t.new_primary,
            t.seconds,
            t.lag_bytes
        );
    }
    for line in summary(&report.trials) {
        println!("{line}");
    }
    if !report.lost.is_empty() {
        println!(
            "lost writes were acknowledged this long before a fence (s): {:?}",
            report.lost_before_fence()
        );
    }
    println!(
        "{} acknowledged writes, {} lost; {} probe writes accepted, {} overlapping",
        report.acked_writes,
        report.lost.len(),
        report.probe_accepted,
        report.overlaps.len()
    );
}

async fn stalled_agent_trials(replication: &str) -> Result<TrialReport> {
    let site = Site::start(&format!("ch-stall-{replication}")).await?;
    site.database(
        "stall",
        &format!("instance: {{storage: {{size: 1Gi}}}}\nmirrors: 2\nreplication: {replication}\nfailover: {{delay: 1s}}"),
    )
    .await?;
    let losses = Loss::cycle(&[Loss::StalledAgent, Loss::CutFromApi], trials());
    let report =
        failover_trials(&site.client, &site.ns.name, "stall", &site.testbed, &losses, TIMEOUT, |_, _| {})
            .await?;
    print_report(&report);
    site.testbed.stop().await?;
    Ok(report)
}

/// Guarantee 1, sync: an agent frozen or cut off from the API while its
/// server runs and clients keep their connections: the server stops
/// taking writes (its watchdog) before anyone else is promoted.
#[tokio::test]
async fn a_stalled_agent_never_leaves_a_live_primary_in_sync_mode() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let report = stalled_agent_trials("sync").await?;
    let overlaps = &report.overlaps;
    assert!(overlaps.is_empty(), "two members took writes at once: {:?}", &overlaps[..overlaps.len().min(3)]);
    assert!(report.lost.is_empty(), "acknowledged writes lost in sync mode: {:?}", report.lost);
    assert_eq!(report.failovers_after - report.failovers_before, trials() as i64, "one failover per trial");
    Ok(())
}

/// Guarantee 1, async: never two writers, and what is lost is only what
/// was in flight when the old primary was fenced, and it is reported.
#[tokio::test]
async fn a_stalled_agent_loses_at_most_what_was_in_flight_in_async_mode() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let report = stalled_agent_trials("async").await?;
    let overlaps = &report.overlaps;
    assert!(overlaps.is_empty(), "two members took writes at once: {:?}", &overlaps[..overlaps.len().min(3)]);
    // Lost: only what the old primary acknowledged in the instant before it
    // was fenced and had not sent yet.
    let stray = report.lost_outside_fences(Duration::from_secs(1));
    assert_eq!(stray, 0, "lost writes acknowledged more than 1 s before any fence: {:?}", report.lost);
    // Every failover says how far the promoted member was behind what the
    // old primary last reported.
    assert!(report.trials.iter().all(|t| t.lag_bytes.is_some()), "a failover without its loss bound");
    Ok(())
}

/// Guarantee 2: with the agent *and* its watchdog frozen (past what the
/// design covers) the old primary lives on, yet no write it acknowledges
/// after the fence can be missing from the new primary: every mirror
/// stopped receiving from it before positions were compared.
#[tokio::test]
async fn without_its_watchdog_an_old_primary_still_gathers_no_acknowledgement() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("ch-nowd").await?;
    site.database(
        "solo",
        "instance: {storage: {size: 1Gi}}\nmirrors: 2\nreplication: sync\nfailover: {delay: 1s}",
    )
    .await?;
    let losses = Loss::cycle(&[Loss::StalledWatchdog], 3);
    let report =
        failover_trials(&site.client, &site.ns.name, "solo", &site.testbed, &losses, TIMEOUT, |_, _| {})
            .await?;
    print_report(&report);
    assert!(report.lost.is_empty(), "acknowledged writes lost: {:?}", report.lost);
    site.testbed.stop().await?;
    Ok(())
}

/// The walreceiver of the server whose cluster_name is `cluster`.
fn walreceiver_pid(cluster: &str) -> Result<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", &format!("postgres: {cluster}: walreceiver")])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    text.lines().next().context("a walreceiver process")?.trim().parse().context("pid")
}

/// Guarantee 3: a primary whose server died reports no position, yet its
/// last known one stands: a mirror too far behind is never taken for
/// caught up, by a failover or by a switchover.
#[tokio::test]
async fn a_dead_primary_never_makes_a_lagging_mirror_look_caught_up() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("ch-lag").await?;
    site.database(
        "lag",
        "instance: {storage: {size: 1Gi}}\nmirrors: 1\nfailover: {delay: 1s, maxLagBytes: 4096}",
    )
    .await?;
    let dbm: DatabaseMirror = site.healthy("lag").await?;
    let primary = current_primary(&dbm).context("a primary")?;
    let mirror = if primary == "lag-1" { "lag-2" } else { "lag-1" };
    site.sql("lag", "CREATE TABLE rows (id int, pad text)").await?;
    let receiver = walreceiver_pid(&mirror.replace('-', "_"))?;
    hostwright_e2e::signal(receiver, libc::SIGSTOP)?;
    site.sql("lag", "INSERT INTO rows SELECT generate_series(1, 2000), repeat('x', 200)").await?;
    site.wait("lag", "the mirror's lag above maxLagBytes", move |d: &DatabaseMirror| {
        d.status.as_ref().is_some_and(|s| {
            s.replication.members.iter().any(|m| m.name == mirror && m.lag_bytes.unwrap_or(0) > 4096)
        })
    })
    .await?;

    // A switchover to the lagging mirror waits, and the primary keeps serving.
    site.patch_spec::<DatabaseMirror>("lag", json!({"primary": mirror})).await?;
    site.wait("lag", "SwitchoverWaiting", |d: &DatabaseMirror| {
        condition(d, PROGRESSING).is_some_and(|(_, reason)| reason == "SwitchoverWaiting")
    })
    .await?;
    site.sql("lag", "INSERT INTO rows VALUES (2001, '')").await.context("the primary keeps taking writes")?;
    site.patch_spec::<DatabaseMirror>("lag", json!({"primary": null})).await?;

    // The primary's server dies (its agent lives and reports no position).
    site.testbed.kill_server(&primary).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let dbm: DatabaseMirror = site.api().get("lag").await?;
    assert_eq!(failovers(&dbm), 0, "the lagging mirror was promoted: {:?}", dbm.status);
    // Nobody could take over: the old primary serves again, with every row.
    site.wait("lag", "the old primary serving again", move |d: &DatabaseMirror| {
        current_primary(d).as_deref() == Some(primary.as_str())
    })
    .await?;
    let n: i64 = site.sql("lag", "SELECT count(*) FROM rows").await?[0].get(0);
    assert_eq!(n, 2001, "every acknowledged row is there");
    hostwright_e2e::signal(receiver, libc::SIGCONT)?;
    let dbm: DatabaseMirror = site.healthy("lag").await?;
    assert_eq!(failovers(&dbm), 0);
    site.testbed.stop().await?;
    Ok(())
}

/// Guarantee 4: instructions a former leader wrote before a failover, put
/// back on the pods afterwards, are ignored by the agents (their epoch is
/// older than one they acted on) and replaced by the operator.
#[tokio::test]
async fn a_former_leaders_instructions_are_ignored() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("ch-stale").await?;
    site.database("stale", "instance: {storage: {size: 1Gi}}\nmirrors: 2\nfailover: {delay: 1s}").await?;
    let dbm: DatabaseMirror = site.healthy("stale").await?;
    let before = failovers(&dbm);
    let old = current_primary(&dbm).context("a primary")?;
    let pods: Api<Pod> = site.api();
    let mut stale = BTreeMap::new();
    for pod in pods.list(&Default::default()).await?.items {
        if let Some(i) = pod.annotations().get(INSTRUCTION_ANNOTATION) {
            stale.insert(pod.name_any(), i.clone());
        }
    }
    ensure!(stale.len() == 3, "three instructed members: {stale:?}");

    site.testbed.kill_server(&old).await?;
    let moved = old.clone();
    let dbm: DatabaseMirror = site
        .wait("stale", "another primary, every member healthy", move |d: &DatabaseMirror| {
            current_primary(d).is_some_and(|p| p != moved) && all_healthy(d)
        })
        .await?;
    let new = current_primary(&dbm).context("a primary")?;
    let creds = site.credentials("stale").await?;
    let members: Vec<String> = stale.keys().cloned().collect();
    site.sql("stale", "CREATE TABLE probe_stale (member text, at timestamptz DEFAULT now())").await?;
    site.healthy::<DatabaseMirror>("stale").await?;
    let probe = SplitBrainProbe::start(&site.client, &site.ns.name, &members, &creds, "probe_stale").await?;

    // The former leader writes what it decided before, unconditionally.
    for (pod, text) in &stale {
        let patch = json!({ "metadata": { "annotations": { INSTRUCTION_ANNOTATION: text } } });
        pods.patch(pod, &PatchParams::default(), &Patch::Merge(patch)).await?;
    }
    let leases: Api<Lease> = site.api();
    let newest = Instruction::parse(stale.values().next().context("an instruction")?)?.epoch;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for member in &members {
        let lease = leases.get(member).await?;
        let (report, _) =
            lease.metadata.annotations.as_ref().and_then(decode_report).context("a report on the lease")?;
        assert!(report.epoch > newest, "{member} acts on epoch {} (the stale one is {newest})", report.epoch);
    }
    // The operator puts the current instructions back; nothing moved.
    let kept = new.clone();
    let dbm: DatabaseMirror = site
        .wait("stale", "the same primary, healthy", move |d: &DatabaseMirror| {
            current_primary(d).as_deref() == Some(kept.as_str()) && all_healthy(d)
        })
        .await?;
    assert_eq!(failovers(&dbm), before + 1, "only the one failover");
    for pod in pods.list(&Default::default()).await?.items {
        let text = pod.annotations().get(INSTRUCTION_ANNOTATION).cloned().unwrap_or_default();
        assert!(Instruction::parse(&text)?.epoch > newest, "{} still carries {text}", pod.name_any());
    }
    let (accepted, overlaps) = probe.stop().await;
    println!("{accepted} probe writes accepted, {} overlapping", overlaps.len());
    assert!(overlaps.is_empty(), "a stale instruction made a second writer: {:?}", overlaps.first());
    site.testbed.stop().await?;
    Ok(())
}

/// Guarantee 5: a store deleted by mistake (volumes kept) and applied
/// again resumes from the member with the most advanced data, not from
/// `<name>-1`.
#[tokio::test]
async fn a_store_recreated_over_kept_volumes_resumes_from_the_most_advanced_member() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("ch-recreate").await?;
    let spec = "instance: {storage: {size: 1Gi}}\nmirrors: 1\nfailover: {delay: 1s}";
    site.database("shop", spec).await?;
    site.healthy::<DatabaseMirror>("shop").await?;
    site.sql("shop", "CREATE TABLE orders (id int PRIMARY KEY)").await?;
    site.sql("shop", "INSERT INTO orders SELECT generate_series(1, 100)").await?;
    site.patch_spec::<DatabaseMirror>("shop", json!({"primary": "shop-2"})).await?;
    site.wait("shop", "shop-2 primary", |d: &DatabaseMirror| {
        current_primary(d).as_deref() == Some("shop-2") && all_healthy(d)
    })
    .await?;

    // shop-1 is down while 440 writes are acknowledged on shop-2.
    site.testbed.kill_member("shop-1").await?;
    let creds = site.credentials("shop").await?;
    let db = hostwright_e2e::database::connect_rw(&site.client, &site.ns.name, "shop", &creds).await?;
    for id in 101..=540 {
        db.execute("INSERT INTO orders VALUES ($1)", &[&id]).await?;
    }
    drop(db);

    // Deleted by mistake, then applied again from the same YAML.
    let api: Api<DatabaseMirror> = site.api();
    api.delete("shop", &DeleteParams::foreground()).await?;
    wait_deleted(&api, "shop", TIMEOUT, "the DatabaseMirror").await?;
    site.testbed.revive("shop-1")?;
    let volumes: Api<PersistentVolumeClaim> = site.api();
    ensure!(
        volumes.get_opt("shop-1").await?.is_some() && volumes.get_opt("shop-2").await?.is_some(),
        "volumes kept"
    );
    site.database("shop", spec).await?;
    let dbm: DatabaseMirror = hostwright_e2e::wait_for(
        &api,
        "shop",
        Duration::from_secs(180),
        "healthy again within 3 minutes",
        |d: Option<&DatabaseMirror>| d.is_some_and(all_healthy),
    )
    .await?;
    assert_eq!(current_primary(&dbm).as_deref(), Some("shop-2"), "resumed from the most advanced member");
    let n: i64 = site.sql("shop", "SELECT count(*) FROM orders").await?[0].get(0);
    assert_eq!(n, 540, "every acknowledged write survived the re-creation");
    site.testbed.stop().await?;
    Ok(())
}

/// Guarantee 6: a primary that comes back at a new pod address is
/// followed, and a mirror counts as healthy only while it streams from it.
#[tokio::test]
async fn mirrors_follow_a_primary_to_its_new_address() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("ch-moved").await?;
    // No failover: the deleted primary's pod comes back and stays primary.
    site.database(
        "moved",
        "instance: {storage: {size: 1Gi}}\nmirrors: 1\nfailover: {enabled: false, delay: 1s}",
    )
    .await?;
    let dbm: DatabaseMirror = site.healthy("moved").await?;
    let primary = current_primary(&dbm).context("a primary")?;
    let pods: Api<Pod> = site.api();
    let ip = |p: Pod| p.status.and_then(|s| s.pod_ip).unwrap_or_default();
    let old_pod = pods.get(&primary).await?;
    let node = old_pod.spec.as_ref().and_then(|s| s.node_name.clone()).context("a scheduled pod")?;
    let before = ip(old_pod);
    // Its node cordoned, the recreated pod lands elsewhere: another address
    // for certain (a node may hand a freed address out again).
    hostwright_e2e::kubectl(&["cordon", &node])?;
    let _uncordon = hostwright_e2e::Cordoned(node);
    pods.delete(&primary, &DeleteParams::default()).await?;
    let (p, b) = (primary.clone(), before.clone());
    let moved_pods = pods.clone();
    eventually(TIMEOUT, "the primary's pod back at a new address", move || {
        let (pods, p, b) = (moved_pods.clone(), p.clone(), b.clone());
        async move { Ok(pods.get_opt(&p).await?.map(ip).filter(|a| !a.is_empty() && *a != b)) }
    })
    .await?;
    let dbm: DatabaseMirror = site.healthy("moved").await?;
    assert_eq!(current_primary(&dbm).as_deref(), Some(primary.as_str()));
    site.sql("moved", "CREATE TABLE after_move (id int)").await?;
    site.sql("moved", "INSERT INTO after_move SELECT generate_series(1, 10)").await?;
    let creds = site.credentials("moved").await?;
    let ro = hostwright_e2e::testbed::ready_endpoints(&site.client, &site.ns.name, "moved-ro").await?;
    ensure!(ro.len() == 1, "the mirror behind moved-ro: {ro:?}");
    let host = ro[0].clone();
    eventually(TIMEOUT, "rows written after the move on the mirror", || {
        let (creds, host) = (creds.clone(), host.clone());
        async move {
            let db = creds.connect(&host).await?;
            let n: i64 = db.query_one("SELECT count(*) FROM after_move", &[]).await?.get(0);
            Ok((n == 10).then_some(()))
        }
    })
    .await?;
    site.testbed.stop().await?;
    Ok(())
}

/// Guarantee 9: `storage.deleteOnRemoval` decides the fate of volumes and
/// the members' Secret (`<name>-agent`, whose passwords open the data) that
/// exist already, in both directions.
#[tokio::test]
async fn delete_on_removal_means_what_it_says_for_existing_volumes() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("ch-removal").await?;
    let volumes: Api<PersistentVolumeClaim> = site.api();
    let secrets: Api<Secret> = site.api();
    let api: Api<DatabaseMirror> = site.api();
    for (name, first, then, kept) in [("flip-on", false, true, false), ("flip-off", true, false, true)] {
        site.database(
            name,
            &format!("instance: {{storage: {{size: 1Gi, deleteOnRemoval: {first}}}}}\nmirrors: 1"),
        )
        .await?;
        site.healthy::<DatabaseMirror>(name).await?;
        site.patch_spec::<DatabaseMirror>(name, json!({"instance": {"storage": {"deleteOnRemoval": then}}}))
            .await?;
        let owned = |v: &PersistentVolumeClaim| !v.owner_references().is_empty();
        eventually(TIMEOUT, "existing volumes' ownership to follow the spec", || async {
            let all = [volumes.get(&format!("{name}-1")).await?, volumes.get(&format!("{name}-2")).await?];
            let secret = secrets.get(&format!("{name}-agent")).await?;
            let done = all.iter().all(|v| owned(v) == then) && secret.owner_references().is_empty() != then;
            Ok(done.then_some(()))
        })
        .await?;
        api.delete(name, &DeleteParams::foreground()).await?;
        wait_deleted(&api, name, TIMEOUT, "the DatabaseMirror").await?;
        let left = async |n: String| -> Result<bool> { Ok(volumes.get_opt(&n).await?.is_some()) };
        if kept {
            assert!(
                left(format!("{name}-1")).await? && left(format!("{name}-2")).await?,
                "{name}: volumes kept"
            );
            ensure!(
                secrets.get_opt(&format!("{name}-agent")).await?.is_some(),
                "{name}: the members' Secret kept"
            );
        } else {
            eventually(TIMEOUT, "volumes and Secret deleted with the store", || async {
                let gone = !left(format!("{name}-1")).await?
                    && !left(format!("{name}-2")).await?
                    && secrets.get_opt(&format!("{name}-agent")).await?.is_none();
                Ok(gone.then_some(()))
            })
            .await?;
        }
    }
    site.testbed.stop().await?;
    Ok(())
}

/// Guarantee 10: synchronous replication with its only mirror down never
/// blocks writes silently: `required` blocks them and says so, `preferred`
/// keeps taking them and says so.
#[tokio::test]
async fn a_lone_primary_blocks_or_relaxes_visibly() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("ch-dur").await?;
    for durability in ["required", "preferred"] {
        let name = format!("d-{durability}");
        site.database(
            &name,
            &format!("instance: {{storage: {{size: 1Gi}}}}\nmirrors: 1\nreplication: sync\ndataDurability: {durability}"),
        )
        .await?;
        let dbm: DatabaseMirror = site.healthy(&name).await?;
        let primary = current_primary(&dbm).context("a primary")?;
        let mirror = if primary.ends_with("-1") { format!("{name}-2") } else { format!("{name}-1") };
        site.sql(&name, "CREATE TABLE t (id int)").await?;
        site.testbed.kill_member(&mirror).await?;
        let creds = site.credentials(&name).await?;
        let db = hostwright_e2e::database::connect_rw(&site.client, &site.ns.name, &name, &creds).await?;
        if durability == "required" {
            let dbm: DatabaseMirror = site
                .wait(&name, "Ready=False WritesBlocked", |d: &DatabaseMirror| {
                    ready_reason(d).as_deref() == Some("WritesBlocked")
                })
                .await?;
            println!("{name}: {:?}", condition(&dbm, READY));
            let write =
                tokio::time::timeout(Duration::from_secs(3), db.execute("INSERT INTO t VALUES (1)", &[]))
                    .await;
            assert!(write.is_err(), "a write was acknowledged with no mirror to acknowledge it");
        } else {
            site.wait(&name, "Degraded DurabilityRelaxed", |d: &DatabaseMirror| {
                condition(d, DEGRADED) == Some(("True".into(), "DurabilityRelaxed".into()))
            })
            .await?;
            tokio::time::timeout(Duration::from_secs(10), db.execute("INSERT INTO t VALUES (1)", &[]))
                .await
                .context("a preferred store keeps taking writes")??;
            let dbm: DatabaseMirror = site.api().get(&name).await?;
            assert_eq!(ready_reason(&dbm).as_deref(), Some("PrimaryServing"));
        }
        site.testbed.revive(&mirror)?;
        site.healthy::<DatabaseMirror>(&name).await?;
        site.sql(&name, "INSERT INTO t VALUES (2)").await.context("writes flow once the mirror is back")?;
    }
    site.testbed.stop().await?;
    Ok(())
}
