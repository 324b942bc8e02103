//! Faults injected into SessionStores on real Redis 7 behind real agents,
//! under a writer that counts a session only once `WAIT 1` confirmed it.

use std::time::Duration;

use anyhow::{Context, Result};
use hostwright::api::SessionStore;
use hostwright::api::common::condition_type::DEGRADED;
use hostwright_e2e::sessions::{self, current_primary};
use hostwright_e2e::site::{SERIAL, Site, TIMEOUT, condition, ready_reason};
use hostwright_e2e::trials::{Loss, SessionTrialReport, session_failover_trials, summary};

/// Trials of each timing-dependent scenario.
fn trials() -> usize {
    std::env::var("HOSTWRIGHT_E2E_CHAOS_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(10)
}

async fn confirmed_trials(prefix: &str, spec: &str, losses: &[Loss]) -> Result<SessionTrialReport> {
    let site = Site::start(prefix).await?;
    site.sessions("sessions", spec).await?;
    let report = session_failover_trials(
        &site.client,
        &site.ns.name,
        "sessions",
        &site.testbed,
        losses,
        true,
        TIMEOUT,
        |i, t| {
            println!(
                "trial {i}: {} of {}: sessions resumed on {} after {:.2} s",
                t.loss, t.old_primary, t.new_primary, t.seconds
            )
        },
    )
    .await?;
    for line in summary(&report.trials) {
        println!("{line}");
    }
    println!("{} confirmed session writes, {} lost", report.confirmed_writes, report.lost.len());
    site.testbed.stop().await?;
    Ok(report)
}

/// Guarantee 5: `kubectl delete pod` of the primary of a store without
/// storage promotes a replica; the recreated, empty member never becomes a
/// primary its replicas would copy.
#[tokio::test]
async fn deleting_the_primary_pod_of_a_store_without_storage_loses_no_confirmed_session() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let losses = Loss::cycle(&[Loss::DeletedPod], trials());
    let report =
        confirmed_trials("ch-sdelete", "replicas: 2\ndurability: wait\nfailover: {delay: 1s}", &losses)
            .await?;
    assert!(
        report.lost.is_empty(),
        "confirmed sessions lost: {} of {}",
        report.lost.len(),
        report.confirmed_writes
    );
    assert_eq!(
        report.failovers_after - report.failovers_before,
        trials() as i64,
        "one failover per deleted pod"
    );
    Ok(())
}

/// Guarantee 1 for sessions: an agent frozen or cut off from the API.
#[tokio::test]
async fn a_stalled_session_agent_loses_no_confirmed_session() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let losses = Loss::cycle(&[Loss::StalledAgent, Loss::CutFromApi], trials());
    let report =
        confirmed_trials("ch-sstall", "replicas: 2\ndurability: wait\nfailover: {delay: 1s}", &losses)
            .await?;
    assert!(
        report.lost.is_empty(),
        "confirmed sessions lost: {} of {}",
        report.lost.len(),
        report.confirmed_writes
    );
    Ok(())
}

/// Guarantee 10 for sessions: `durability: wait` with its only replica
/// down refuses writes visibly (`required`) or keeps taking them visibly
/// (`preferred`).
#[tokio::test]
async fn a_lone_session_primary_refuses_or_relaxes_visibly() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("ch-sdur").await?;
    for durability in ["required", "preferred"] {
        let name = format!("s-{durability}");
        site.sessions(&name, &format!("replicas: 1\ndurability: wait\ndataDurability: {durability}")).await?;
        let store: SessionStore = site.healthy(&name).await?;
        let primary = current_primary(&store).context("a primary")?;
        let replica = if primary.ends_with("-1") { format!("{name}-2") } else { format!("{name}-1") };
        site.testbed.kill_member(&replica).await?;
        let login = sessions::login(&site.client, &site.ns.name, &name).await?;
        let write = || async {
            let mut conn = sessions::connect_primary(&site.client, &site.ns.name, &name, &login).await?;
            let r: redis::RedisResult<()> = redis::cmd("SET").arg("k").arg("v").query_async(&mut conn).await;
            Ok::<_, anyhow::Error>(r)
        };
        if durability == "required" {
            site.wait(&name, "Ready=False WritesBlocked", |s: &SessionStore| {
                ready_reason(s).as_deref() == Some("WritesBlocked")
            })
            .await?;
            // min-replicas-max-lag is 10 s: past it, writes are refused.
            hostwright_e2e::eventually(
                Duration::from_secs(30),
                "writes refused without a replica",
                || async { Ok(write().await?.is_err().then_some(())) },
            )
            .await?;
        } else {
            site.wait(&name, "Degraded DurabilityRelaxed", |s: &SessionStore| {
                condition(s, DEGRADED) == Some(("True".into(), "DurabilityRelaxed".into()))
            })
            .await?;
            tokio::time::sleep(Duration::from_secs(12)).await;
            write().await?.context("a preferred store keeps taking writes")?;
            let store: SessionStore = site.api().get(&name).await?;
            assert_eq!(ready_reason(&store).as_deref(), Some("PrimaryServing"));
        }
        site.testbed.revive(&replica)?;
        site.healthy::<SessionStore>(&name).await?;
        write().await?.context("writes flow once the replica is back")?;
    }
    site.testbed.stop().await?;
    Ok(())
}
