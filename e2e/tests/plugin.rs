//! `kubectl hostwright`, found by kubectl itself on the PATH as
//! `kubectl-hostwright` (a link to the operator's binary), against the
//! real API server: `site` prints what the API server accepts, `status`
//! shows what the operator reports of a running site, `switchover` and
//! `restart` move a store's primary and roll its members under writes with
//! nothing acknowledged lost.

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use hostwright::api::{DatabaseMirror, SessionStore, WebCluster};
use hostwright_e2e::database::{all_healthy, current_primary};
use hostwright_e2e::site::{SERIAL, Site, StoreLoad, TIMEOUT};
use hostwright_e2e::{TestNamespace, client, ensure_crds, wait_web_ready};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

/// A directory holding `kubectl-hostwright`, linked to the binary under
/// test, and PATH with it first.
fn plugin_path(ns: &str) -> Result<(std::path::PathBuf, String)> {
    let dir = std::env::temp_dir().join(format!("hostwright-plugin-{ns}"));
    std::fs::create_dir_all(&dir)?;
    let link = dir.join("kubectl-hostwright");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(hostwright_e2e::operator::binary(), &link)?;
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    Ok((dir, path))
}

fn kubectl(path: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new("kubectl")
        .args(args)
        .env("PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl")?;
    if let Some(input) = stdin {
        child.stdin.take().context("kubectl's stdin")?.write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn the_site_it_prints_is_accepted_by_the_api_server_in_both_tiers() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "plugin", &[]).await?;
    let (dir, path) = plugin_path(&ns.name)?;
    ensure!(
        kubectl(&path, &["plugin", "list"], None)?.contains("kubectl-hostwright"),
        "kubectl does not list the plugin"
    );

    for (name, tier) in [("shop", &[][..]), ("shop-staging", &["--staging"][..])] {
        let mut args = vec!["hostwright", "site", name, "--host", "shop.example.com"];
        args.extend_from_slice(tier);
        let yaml = kubectl(&path, &args, None)?;
        let applied = kubectl(&path, &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"], Some(&yaml))?;
        println!("{}", applied.trim());
        for object in [
            format!("sessionstore.hostwright.io/{name}-sessions"),
            format!("databasemirror.hostwright.io/{name}-db"),
            format!("webcluster.hostwright.io/{name}"),
        ] {
            ensure!(applied.contains(&object), "{object} not applied:\n{applied}\n{yaml}");
        }
    }

    let refused =
        Command::new("kubectl").args(["hostwright", "site", "Not_A_Name"]).env("PATH", &path).output()?;
    let why = String::from_utf8_lossy(&refused.stderr);
    std::fs::remove_dir_all(&dir)?;
    ensure!(
        !refused.status.success() && why.contains("DNS-1035"),
        "a bad site name was not refused clearly: {why}"
    );
    Ok(())
}

/// `kubectl hostwright status` on a site the operator runs (stores on the
/// test bed's real servers): the whole tree, then the failover it saw.
#[tokio::test]
async fn status_shows_the_site_tree_and_a_failover_as_the_operator_reports_them() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("plugin").await?;
    site.sessions("shop-sessions", "replicas: 2\ndurability: wait\nfailover: {delay: 1s}").await?;
    site.database("shop-db", "instance: {storage: {size: 1Gi}}\nmirrors: 1\nfailover: {delay: 1s}").await?;
    site.healthy::<SessionStore>("shop-sessions").await?;
    let db = site.healthy::<DatabaseMirror>("shop-db").await?;
    let web: WebCluster = serde_json::from_value(json!({
        "apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster", "metadata": {"name": "shop"},
        "spec": {"image": "shop:1", "replicas": 3,
                 "sessionStoreRef": {"name": "shop-sessions"}, "databaseRef": {"name": "shop-db"}},
    }))?;
    let webs: Api<WebCluster> = site.api();
    webs.create(&PostParams::default(), &web).await?;
    wait_web_ready(&webs, "shop", TIMEOUT).await?;
    let (dir, path) = plugin_path(&site.ns.name)?;

    let view = kubectl(&path, &["hostwright", "status", "shop", "-n", &site.ns.name], None)?;
    println!("{view}");
    let primary = current_primary(&db).context("a primary")?;
    let expected = [
        format!("Site shop (namespace {})", site.ns.name),
        "WebCluster shop  Ready  3/3 ready".to_string(),
        "SessionStore shop-sessions  Ready  primary shop-sessions-".to_string(),
        format!("DatabaseMirror shop-db  Ready  primary {primary}"),
        "primary  yes".to_string(),
        "mirror   yes".to_string(),
        "failovers: none".to_string(),
        "Ready=True".to_string(),
    ];
    for line in &expected {
        ensure!(view.contains(line.as_str()), "the view lacks {line:?}");
    }
    ensure!(!view.contains('\x1b'), "colours in a pipe");

    let promoted = site.lose_primary_machine("shop-db", &primary).await?;
    let view = kubectl(&path, &["hostwright", "status", "shop", "-n", &site.ns.name], None)?;
    println!("{view}");
    ensure!(
        view.contains(&format!("primary {promoted}")),
        "the view does not show the new primary {promoted}"
    );
    ensure!(view.contains("failovers: 1, the last at"), "the view does not show the failover");

    let missing = Command::new("kubectl")
        .args(["hostwright", "status", "no-such-site", "-n", &site.ns.name])
        .env("PATH", &path)
        .output()?;
    let why = String::from_utf8_lossy(&missing.stderr);
    ensure!(!missing.status.success() && why.contains("no WebCluster \"no-such-site\""), "{why}");
    std::fs::remove_dir_all(&dir)?;
    site.testbed.stop().await?;
    Ok(())
}

/// `kubectl hostwright switchover` and `restart` on stores the operator runs
/// on the test bed's real servers, while rows and sessions are written
/// through the stores' Services: the database's primary moves to the member
/// asked for, every session store member is replaced once, and nothing
/// acknowledged is lost. Bad requests are refused with a reason.
#[tokio::test]
async fn switchover_and_restart_move_the_stores_with_nothing_lost() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("plugin-moves").await?;
    site.sessions("shop-sessions", "replicas: 2\ndurability: wait\nfailover: {delay: 1s}").await?;
    site.database("shop-db", "instance: {storage: {size: 1Gi}}\nmirrors: 2\nfailover: {delay: 1s}").await?;
    site.healthy::<SessionStore>("shop-sessions").await?;
    let db = site.healthy::<DatabaseMirror>("shop-db").await?;
    let ns = site.ns.name.clone();
    let (dir, path) = plugin_path(&ns)?;
    let load = StoreLoad::start(&site, "shop-db", "shop-sessions").await?;

    let old = current_primary(&db).context("a primary")?;
    let said = kubectl(&path, &["hostwright", "switchover", "dbm/shop-db", &old, "-n", &ns], None);
    ensure!(
        said.as_ref().is_err_and(|e| e.to_string().contains("already the primary")),
        "a switchover to the primary was not refused: {said:?}"
    );
    let target = db
        .status
        .as_ref()
        .context("a status")?
        .replication
        .members
        .iter()
        .map(|m| m.name.clone())
        .find(|m| *m != old)
        .context("a mirror")?;
    let said =
        kubectl(&path, &["hostwright", "switchover", "databasemirror/shop-db", &target, "-n", &ns], None)?;
    print!("{said}");
    ensure!(said.contains(&format!("from {old} to {target}")), "{said}");
    let wanted = target.clone();
    site.wait::<DatabaseMirror>("shop-db", "the asked member primary, every member healthy", move |d| {
        current_primary(d).as_deref() == Some(wanted.as_str()) && all_healthy(d)
    })
    .await?;

    let pods: Api<Pod> = site.api();
    let members = ListParams::default().labels("app.kubernetes.io/instance=shop-sessions");
    let before: Vec<(String, String)> =
        pods.list(&members).await?.iter().map(|p| (p.name_any(), p.uid().unwrap_or_default())).collect();
    ensure!(before.len() == 3, "session store pods: {before:?}");
    let said = kubectl(&path, &["hostwright", "restart", "shop-sessions", "-n", &ns], None)?;
    print!("{said}");
    ensure!(said.contains("SessionStore shop-sessions: restart asked"), "{said}");
    hostwright_e2e::eventually(TIMEOUT, "every session store member replaced, and healthy", || async {
        let store: SessionStore = site.api().get("shop-sessions").await?;
        let now = pods.list(&members).await?;
        let replaced = before.iter().all(|(name, uid)| {
            now.iter().any(|p| p.name_any() == *name && p.uid().as_deref() != Some(uid.as_str()))
        });
        let rolled = store.status.as_ref().is_some_and(|s| s.replication.rollout.is_none());
        Ok((replaced && rolled && all_healthy(&store)).then_some(()))
    })
    .await?;

    let tally = load.stop(&site).await?;
    println!("switchover and restart under writes: {tally}");
    tally.ensure_nothing_lost()?;

    let unknown = kubectl(&path, &["hostwright", "restart", "no-such-store", "-n", &ns], None);
    ensure!(
        unknown
            .as_ref()
            .is_err_and(|e| e.to_string().contains("no SessionStore or DatabaseMirror \"no-such-store\"")),
        "{unknown:?}"
    );
    std::fs::remove_dir_all(&dir)?;
    site.testbed.stop().await?;
    Ok(())
}
