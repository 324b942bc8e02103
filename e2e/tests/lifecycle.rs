//! Day 2 for the stores, end to end on real PostgreSQL and Redis behind the
//! test bed: rolling updates of the instance template under a confirming
//! writer, a setting that breaks the first mirror, a drain of the primary's
//! node, volume expansion, and a shrink. Every case counts acknowledged
//! writes lost and moments two members took writes at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hostwright::api::common::condition_type::{DEGRADED, DRAIN_BLOCKED};
use hostwright::api::{DatabaseMirror, SessionStore};
use hostwright::controllers::members::{Replicated, StoreStatus};
use hostwright::resources::members::TEMPLATE_HASH_ANNOTATION;
use hostwright_e2e::database::{
    Credentials, SplitBrainProbe, Writer, all_healthy, current_primary, lost_writes,
};
use hostwright_e2e::lifecycle::settled;
use hostwright_e2e::sessions::{self, Sessions};
use hostwright_e2e::site::{SERIAL, Site, condition, failovers};
use hostwright_e2e::writer::Writer as Load;
use hostwright_e2e::{drain_node, eventually, wait_for};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

/// A whole rolling update of three members on the test bed takes well
/// under this; a halted one is judged after `UPDATE_TIMEOUT_MS`.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);

/// The revision annotation of every member pod that exists, by member.
async fn revisions(site: &Site, members: &[String]) -> Result<BTreeMap<String, String>> {
    let pods = site.api::<Pod>();
    let mut out = BTreeMap::new();
    for m in members {
        if let Some(p) = pods.get_opt(m).await? {
            out.insert(m.clone(), p.annotations().get(TEMPLATE_HASH_ANNOTATION).cloned().unwrap_or_default());
        }
    }
    Ok(out)
}

/// Reasons and notes of the Events about `name`.
async fn events_about(site: &Site, name: &str) -> Result<Vec<(String, String)>> {
    let events = site.api::<Event>().list(&ListParams::default()).await?.items;
    Ok(events
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}

/// The longest time between two consecutive acknowledgements: how long
/// the writer could not write.
fn longest_gap(acked_at: &HashMap<i64, Instant>) -> Duration {
    let mut at: Vec<Instant> = acked_at.values().copied().collect();
    at.sort();
    at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// Watches the members' pods every 100 ms and records the most that were
/// away at once (no pod, or a pod being deleted): a rolling update must
/// never take more than one.
struct AwayWatch {
    most: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl AwayWatch {
    fn start(site: &Site, members: &[String]) -> Self {
        let (most, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (pods, members) = (site.api::<Pod>(), members.to_vec());
        let task = tokio::spawn({
            let (most, stop) = (most.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(list) = pods.list(&ListParams::default()).await {
                        let present: BTreeSet<String> = list
                            .items
                            .iter()
                            .filter(|p| p.metadata.deletion_timestamp.is_none())
                            .map(|p| p.name_any())
                            .collect();
                        let away = members.iter().filter(|m| !present.contains(*m)).count();
                        most.fetch_max(away, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self { most, stop, task }
    }

    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.most.load(Ordering::Relaxed)
    }
}

/// Every member runs `revision` (other than `old`), the rollout is over and
/// every member streams.
async fn rolled<K: Replicated>(site: &Site, name: &str, old: &BTreeMap<String, String>) -> Result<K> {
    let api = site.api::<K>();
    let generation = api.get(name).await?.meta().generation;
    let store = wait_for(&api, name, ROLLOUT_TIMEOUT, "the rollout to finish", move |s: Option<&K>| {
        s.is_some_and(|s| {
            all_healthy(s)
                && s.current_status().is_some_and(|st| {
                    st.replication().rollout.is_none() && st.replication().observed_generation >= generation
                })
        })
    })
    .await?;
    let members: Vec<String> = old.keys().cloned().collect();
    let now = revisions(site, &members).await?;
    let new: BTreeSet<&String> = now.values().collect();
    ensure!(new.len() == 1, "every member on one revision: {now:?}");
    ensure!(now.values().all(|r| !old.values().any(|o| o == r)), "every member replaced: {old:?} → {now:?}");
    Ok(store)
}

async fn database_rolling_update(mode: &str) -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start(&format!("roll-{mode}")).await?;
    site.database(
        "roll",
        &format!(
            "instance: {{image: 'postgres:15.17', storage: {{size: 1Gi}}}}\nmirrors: 2\nreplication: {mode}\n\
             failover: {{delay: 1s}}"
        ),
    )
    .await?;
    let dbm = site.healthy::<DatabaseMirror>("roll").await?;
    let members = dbm.blueprint()?.members;
    let before = revisions(&site, &members).await?;
    let failovers_before = failovers(&dbm);
    site.sql("roll", "CREATE TABLE acked (id bigint PRIMARY KEY)").await?;
    site.sql("roll", "CREATE TABLE probe (member text, at timestamptz DEFAULT now())").await?;
    site.healthy::<DatabaseMirror>("roll").await?;
    let creds = site.credentials("roll").await?;
    let probe = SplitBrainProbe::start(&site.client, &site.ns.name, &members, &creds, "probe").await?;
    let writer =
        Writer::start(site.client.clone(), site.ns.name.clone(), "roll".into(), creds.clone(), "acked");
    eventually(Duration::from_secs(30), "writes flowing", || async {
        Ok(writer.first_ack_after(Instant::now() - Duration::from_secs(1)))
    })
    .await?;
    let away = AwayWatch::start(&site, &members);

    // A minor image, resources and a setting only a restart applies, at once.
    let started = Instant::now();
    site.patch_spec::<DatabaseMirror>(
        "roll",
        json!({"instance": {
            "image": "postgres:15.18",
            "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
            "parameters": {"max_connections": "120"},
        }}),
    )
    .await?;
    let dbm: DatabaseMirror = rolled(&site, "roll", &before).await?;
    let took = started.elapsed();
    let most_away = away.stop().await;
    let acked_at = writer.acked_at();
    let acked = writer.stop().await;
    let (probed, overlaps) = probe.stop().await;
    let lost = lost_writes(&site.client, &site.ns.name, "roll", &creds, "acked", &acked).await?;
    let gap = longest_gap(&acked_at);
    println!(
        "{mode}: rolled 3 members in {:.1} s; {} acknowledged writes, {} lost; longest write pause {:.2} s; \
         {probed} probe writes, {} overlapping; at most {most_away} member away at once",
        took.as_secs_f64(),
        acked.len(),
        lost.len(),
        gap.as_secs_f64(),
        overlaps.len()
    );
    ensure!(overlaps.is_empty(), "two members took writes at once: {:?}", &overlaps[..overlaps.len().min(3)]);
    ensure!(most_away <= 1, "{most_away} members were away at once");
    if mode == "sync" {
        ensure!(lost.is_empty(), "acknowledged writes lost in sync mode: {lost:?}");
    }
    ensure!(failovers(&dbm) == failovers_before + 1, "exactly one switchover moved the primary");
    let primary = current_primary(&dbm).context("a primary")?;
    ensure!(primary != "roll-1", "the primary moved off the outdated member");

    let rows = site.sql("roll", "SHOW max_connections").await?;
    let value: String = rows[0].get(0);
    ensure!(value == "120", "the restart-only setting is in effect: max_connections = {value}");
    for m in &members {
        let pod = site.api::<Pod>().get(m).await?;
        let image = pod
            .spec
            .and_then(|s| s.containers.into_iter().find(|c| c.name == "postgres"))
            .and_then(|c| c.image);
        ensure!(image.as_deref() == Some("postgres:15.18"), "{m} runs {image:?}");
    }
    let events = events_about(&site, "roll").await?;
    let reasons: BTreeSet<&str> = events.iter().map(|(r, _)| r.as_str()).collect();
    for wanted in ["RolloutStarted", "UpdatingMember", "SwitchoverStarted", "RolloutComplete"] {
        ensure!(reasons.contains(wanted), "Event {wanted} among {reasons:?}");
    }
    for m in &members {
        ensure!(
            events.iter().any(|(r, n)| r == "UpdatingMember" && n.starts_with(&format!("replacing {m} "))),
            "{m} was replaced: {events:?}"
        );
    }
    site.testbed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_rolling_update_in_sync_mode_loses_no_acknowledged_write() -> Result<()> {
    database_rolling_update("sync").await
}

#[tokio::test]
async fn a_rolling_update_in_async_mode_keeps_one_writer() -> Result<()> {
    database_rolling_update("async").await
}

#[tokio::test]
async fn a_session_store_rolls_without_losing_a_confirmed_session() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("roll-sessions").await?;
    site.sessions("cart", "replicas: 2\ndurability: wait\nfailover: {delay: 1s}").await?;
    let store = site.healthy::<SessionStore>("cart").await?;
    let members = store.blueprint()?.members;
    let before = revisions(&site, &members).await?;
    let failovers_before = failovers(&store);
    let target = Sessions {
        client: site.client.clone(),
        namespace: site.ns.name.clone(),
        name: "cart".into(),
        login: sessions::login(&site.client, &site.ns.name, "cart").await?,
        confirm: true,
    };
    let writer = Load::run(target.clone());
    let away = AwayWatch::start(&site, &members);
    site.patch_spec::<SessionStore>(
        "cart",
        json!({"image": "redis:7.0.16", "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}}),
    )
    .await?;
    let store: SessionStore = rolled(&site, "cart", &before).await?;
    let most_away = away.stop().await;
    let acked_at = writer.acked_at();
    let confirmed = writer.stop().await;
    let lost = target.lost(&confirmed).await?;
    println!(
        "sessions: {} confirmed, {} lost; longest write pause {:.2} s; at most {most_away} member away at once",
        confirmed.len(),
        lost.len(),
        longest_gap(&acked_at).as_secs_f64()
    );
    ensure!(lost.is_empty(), "confirmed sessions lost: {lost:?}");
    ensure!(most_away <= 1, "{most_away} members were away at once");
    ensure!(failovers(&store) == failovers_before + 1, "exactly one switchover moved the primary");
    site.testbed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_invalid_setting_halts_at_the_first_mirror_and_never_reaches_the_primary() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("roll-halt").await?;
    site.database("halt", "instance: {storage: {size: 1Gi}}\nmirrors: 2\nfailover: {delay: 1s}").await?;
    let dbm = site.healthy::<DatabaseMirror>("halt").await?;
    let members = dbm.blueprint()?.members;
    let before = revisions(&site, &members).await?;
    site.sql("halt", "CREATE TABLE t (id int)").await?;

    site.patch_spec::<DatabaseMirror>(
        "halt",
        json!({"instance": {"parameters": {"shared_buffers": "banana"}}}),
    )
    .await?;
    let halted = wait_for(
        &site.api::<DatabaseMirror>(),
        "halt",
        ROLLOUT_TIMEOUT,
        "the rollout to halt",
        |d: Option<&DatabaseMirror>| {
            d.and_then(|d| d.status.as_ref()?.replication.rollout.as_ref()?.halted_on.clone()).is_some()
        },
    )
    .await?;
    let rollout = halted.status.as_ref().and_then(|s| s.replication.rollout.clone()).context("rollout")?;
    println!("halted: {rollout:?}");
    ensure!(
        rollout.halted_on.as_deref() == Some("halt-3"),
        "halted on the first mirror it replaced: {rollout:?}"
    );
    ensure!(condition(&halted, DEGRADED) == Some(("True".into(), "RolloutHalted".into())));
    let now = revisions(&site, &members).await?;
    for m in ["halt-1", "halt-2"] {
        ensure!(now.get(m) == before.get(m), "{m} untouched: {before:?} → {now:?}");
    }
    ensure!(current_primary(&halted).as_deref() == Some("halt-1"), "the primary is untouched");
    site.sql("halt", "INSERT INTO t VALUES (1)").await.context("writes keep flowing")?;
    let events = events_about(&site, "halt").await?;
    ensure!(events.iter().any(|(r, n)| r == "RolloutHalted" && n.contains("halt-3")), "{events:?}");

    // Fixing the template is a new revision: the broken mirror goes first.
    site.patch_spec::<DatabaseMirror>(
        "halt",
        json!({"instance": {"parameters": {"shared_buffers": "32MB"}}}),
    )
    .await?;
    rolled::<DatabaseMirror>(&site, "halt", &before).await?;
    let rows = site.sql("halt", "SHOW shared_buffers").await?;
    let value: String = rows[0].get(0);
    ensure!(value == "32MB", "shared_buffers = {value}");
    site.testbed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_drain_of_the_primary_node_switches_over_and_completes() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("drain-db").await?;
    site.database(
        "drain",
        "instance: {storage: {size: 1Gi}}\nmirrors: 2\nreplication: sync\nfailover: {delay: 1s}",
    )
    .await?;
    let dbm = site.healthy::<DatabaseMirror>("drain").await?;
    let members = dbm.blueprint()?.members;
    let primary = current_primary(&dbm).context("a primary")?;
    let node = site.api::<Pod>().get(&primary).await?.spec.and_then(|s| s.node_name).context("scheduled")?;
    site.sql("drain", "CREATE TABLE acked (id bigint PRIMARY KEY)").await?;
    site.sql("drain", "CREATE TABLE probe (member text, at timestamptz DEFAULT now())").await?;
    site.healthy::<DatabaseMirror>("drain").await?;
    let creds: Credentials = site.credentials("drain").await?;
    let probe = SplitBrainProbe::start(&site.client, &site.ns.name, &members, &creds, "probe").await?;
    let writer =
        Writer::start(site.client.clone(), site.ns.name.clone(), "drain".into(), creds.clone(), "acked");

    let (output, took) = drain_node(&node, "drain", Duration::from_secs(120)).await?;
    let dbm = site.healthy::<DatabaseMirror>("drain").await?;
    let acked = writer.stop().await;
    let (probed, overlaps) = probe.stop().await;
    let lost = lost_writes(&site.client, &site.ns.name, "drain", &creds, "acked", &acked).await?;
    println!(
        "drain of {node} (primary {primary}) took {:.1} s; {} acknowledged writes, {} lost; {probed} probe \
         writes, {} overlapping\n{output}",
        took.as_secs_f64(),
        acked.len(),
        lost.len(),
        overlaps.len()
    );
    ensure!(current_primary(&dbm).is_some_and(|p| p != primary), "the primary moved off {node}");
    ensure!(lost.is_empty() && overlaps.is_empty(), "lost {lost:?}, overlapping {}", overlaps.len());
    let events = events_about(&site, "drain").await?;
    ensure!(events.iter().any(|(r, n)| r == "DrainSwitchover" && n.contains(&node)), "{events:?}");
    ensure!(condition(&dbm, DRAIN_BLOCKED).is_some_and(|(s, _)| s == "False"));
    site.testbed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn volumes_grow_where_the_class_allows_and_say_so_where_not() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("resize").await?;
    site.database("grow", "instance: {storage: {size: 1Gi}}\nmirrors: 1").await?;
    site.healthy::<DatabaseMirror>("grow").await?;
    site.patch_spec::<DatabaseMirror>("grow", json!({"instance": {"storage": {"size": "2Gi"}}})).await?;
    let claims = site.api::<PersistentVolumeClaim>();
    for m in ["grow-1", "grow-2"] {
        wait_for(
            &claims,
            m,
            Duration::from_secs(60),
            "the volume to grow",
            |c: Option<&PersistentVolumeClaim>| {
                c.and_then(|c| c.status.as_ref()?.capacity.as_ref()?.get("storage").cloned())
                    .is_some_and(|q| q.0 == "2Gi")
            },
        )
        .await?;
    }
    let revisions_unchanged = site.healthy::<DatabaseMirror>("grow").await?;
    ensure!(
        revisions_unchanged.status.as_ref().is_some_and(|s| s.replication.rollout.is_none()),
        "a resize rolls nothing"
    );

    // A class that does not allow expansion: the store says so.
    let class = format!("{}-fixed", site.ns.name);
    let classes: Api<StorageClass> = Api::all(site.client.clone());
    classes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": class}, "provisioner": "hostwright.io/none",
                "allowVolumeExpansion": false,
            }))?,
        )
        .await?;
    site.database(
        "fixed",
        &format!("instance: {{storage: {{size: 1Gi, storageClassName: {class}}}}}\nmirrors: 1"),
    )
    .await?;
    eventually(Duration::from_secs(60), "the volumes of fixed", || async {
        Ok(claims.get_opt("fixed-1").await?.map(|_| ()))
    })
    .await?;
    site.patch_spec::<DatabaseMirror>("fixed", json!({"instance": {"storage": {"size": "2Gi"}}})).await?;
    let note = eventually(Duration::from_secs(60), "a ResizeUnsupported Event", || async {
        let events = events_about(&site, "fixed").await?;
        Ok(events.into_iter().find(|(r, _)| r == "ResizeUnsupported").map(|(_, n)| n))
    })
    .await?;
    println!("{note}");
    ensure!(note.contains("does not allow volume expansion"), "{note}");
    classes.delete(&class, &DeleteParams::default()).await?;
    site.testbed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_shrink_removes_the_highest_mirror_without_losing_a_write() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("shrink").await?;
    site.database(
        "shrink",
        "instance: {storage: {size: 1Gi}}\nmirrors: 2\nreplication: sync\nfailover: {delay: 1s}",
    )
    .await?;
    site.healthy::<DatabaseMirror>("shrink").await?;
    site.sql("shrink", "CREATE TABLE acked (id bigint PRIMARY KEY)").await?;
    let creds = site.credentials("shrink").await?;
    let writer =
        Writer::start(site.client.clone(), site.ns.name.clone(), "shrink".into(), creds.clone(), "acked");
    eventually(Duration::from_secs(30), "writes flowing", || async {
        Ok(writer.first_ack_after(Instant::now() - Duration::from_secs(1)))
    })
    .await?;
    site.patch_spec::<DatabaseMirror>("shrink", json!({"mirrors": 1})).await?;
    hostwright_e2e::wait_deleted(
        &site.api::<Pod>(),
        "shrink-3",
        Duration::from_secs(60),
        "the removed mirror",
    )
    .await?;
    let dbm = site.healthy::<DatabaseMirror>("shrink").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = writer.stop().await;
    let lost = lost_writes(&site.client, &site.ns.name, "shrink", &creds, "acked", &acked).await?;
    println!("shrink: {} acknowledged writes, {} lost", acked.len(), lost.len());
    ensure!(lost.is_empty(), "lost {lost:?}");
    ensure!(dbm.status.as_ref().is_some_and(|s| s.replication.members.len() == 2));
    site.testbed.stop().await?;
    Ok(())
}

/// `SHOW <setting>` and the postmaster's start time on every member, through
/// its own address.
async fn on_each_member(
    site: &Site,
    name: &str,
    members: &[String],
    setting: &str,
) -> Result<Vec<(String, String)>> {
    let creds = site.credentials(name).await?;
    let mut out = Vec::new();
    for m in members {
        let host = hostwright_e2e::database::member_host(&site.client, &site.ns.name, m).await?;
        let db = creds.connect(&host).await?;
        let value: String = db.query_one(&format!("SHOW {setting}"), &[]).await?.get(0);
        let started: String = db.query_one("SELECT pg_postmaster_start_time()::text", &[]).await?.get(0);
        out.push((value, started));
    }
    Ok(out)
}

#[tokio::test]
async fn a_reloadable_setting_restarts_nothing_and_a_bad_one_stops_at_the_first_mirror() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("reload").await?;
    site.database(
        "reload",
        "instance: {storage: {size: 1Gi}, parameters: {work_mem: 4MB}}\nmirrors: 2\nfailover: {delay: 1s}",
    )
    .await?;
    let dbm = site.healthy::<DatabaseMirror>("reload").await?;
    let members = dbm.blueprint()?.members;
    let uids = |pods: Vec<Pod>| pods.into_iter().map(|p| p.uid().unwrap_or_default()).collect::<Vec<_>>();
    let pods_now = || async {
        let mut pods = Vec::new();
        for m in &members {
            pods.push(site.api::<Pod>().get(m).await?);
        }
        anyhow::Ok(pods)
    };
    let before_uids = uids(pods_now().await?);
    let before = on_each_member(&site, "reload", &members, "work_mem").await?;
    ensure!(before.iter().all(|(v, _)| v == "4MB"), "{before:?}");

    site.patch_spec::<DatabaseMirror>("reload", json!({"instance": {"parameters": {"work_mem": "8MB"}}}))
        .await?;
    settled(&site.api(), "reload", ROLLOUT_TIMEOUT).await?;
    let after = on_each_member(&site, "reload", &members, "work_mem").await?;
    println!("work_mem 4MB → 8MB: {after:?}");
    ensure!(after.iter().all(|(v, _)| v == "8MB"), "every member loaded the new value: {after:?}");
    ensure!(
        after.iter().zip(&before).all(|((_, a), (_, b))| a == b),
        "no server restarted: {before:?} → {after:?}"
    );
    ensure!(uids(pods_now().await?) == before_uids, "no pod was replaced");
    let events = events_about(&site, "reload").await?;
    ensure!(events.iter().filter(|(r, _)| r == "ReloadingSettings").count() == 3, "{events:?}");

    // A value PostgreSQL cannot read stops at the first mirror.
    site.patch_spec::<DatabaseMirror>("reload", json!({"instance": {"parameters": {"work_mem": "banana"}}}))
        .await?;
    let halted = wait_for(
        &site.api::<DatabaseMirror>(),
        "reload",
        ROLLOUT_TIMEOUT,
        "the reload to halt",
        |d: Option<&DatabaseMirror>| {
            d.and_then(|d| d.status.as_ref()?.replication.rollout.as_ref()?.halted_on.clone()).is_some()
        },
    )
    .await?;
    let rollout = halted.status.as_ref().and_then(|s| s.replication.rollout.clone()).context("rollout")?;
    println!("halted: {rollout:?}");
    ensure!(rollout.halted_on.as_deref() == Some("reload-3"), "{rollout:?}");
    ensure!(rollout.waiting_for.as_deref().is_some_and(|w| w.contains("work_mem")), "{rollout:?}");
    let now = on_each_member(&site, "reload", &members, "work_mem").await?;
    ensure!(now.iter().all(|(v, _)| v == "8MB"), "nobody runs the bad value: {now:?}");
    ensure!(current_primary(&halted).as_deref() == Some("reload-1"));

    site.patch_spec::<DatabaseMirror>("reload", json!({"instance": {"parameters": {"work_mem": "16MB"}}}))
        .await?;
    settled(&site.api(), "reload", ROLLOUT_TIMEOUT).await?;
    let fixed = on_each_member(&site, "reload", &members, "work_mem").await?;
    ensure!(fixed.iter().all(|(v, _)| v == "16MB"), "{fixed:?}");
    ensure!(uids(pods_now().await?) == before_uids, "still no pod replaced");
    site.testbed.stop().await?;
    Ok(())
}
