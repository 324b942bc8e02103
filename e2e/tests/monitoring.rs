//! The chart's monitoring: the Grafana dashboard's queries parse and name
//! only metrics the code serves, the chart ships the dashboard for Grafana's
//! sidecar, and a real Prometheus scraping a running site (operator, and
//! real agents beside real PostgreSQL and Redis servers) answers every
//! panel, shows each member's role, and loads the alert rules healthy with
//! nothing firing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hostwright::api::{DatabaseMirror, SessionStore, WebCluster};
use hostwright_e2e::database::current_primary;
use hostwright_e2e::monitoring::{
    ALERTS, METRICS, NEEDS_A_FEATURE, PanelQuery, Prometheus, config, dashboard, metric_names,
    promtool_parses, queries, samples, substitute, tool, variables,
};
use hostwright_e2e::site::{SERIAL, Site, TIMEOUT};
use hostwright_e2e::{eventually, wait_web_ready};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// What Grafana would put for `$__rate_interval` at a 2 s scrape interval (four of them), and then some.
const RATE_INTERVAL: &str = "10s";

/// Values for the dashboard's variables, for checks without a cluster.
fn sample_values() -> BTreeMap<String, String> {
    [("namespace", "shop"), ("site", "shop"), ("session_store", "shop-sessions"), ("database", "shop-db")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_dashboard_query_parses_and_names_only_metrics_the_code_serves() -> Result<()> {
    let board = dashboard()?;
    ensure!(
        board["schemaVersion"].as_i64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        board["schemaVersion"]
    );
    let datasource = board["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "datasource")
        .context("no datasource variable")?;
    ensure!(datasource["type"] == "datasource" && datasource["query"] == "prometheus", "{datasource}");

    let values = sample_values();
    let known: BTreeSet<&str> = METRICS.iter().copied().collect();
    let mut parsed = Vec::new();
    let mut unknown = Vec::new();
    let from_variables =
        variables(&board)?.into_iter().map(|v| ("variable ".to_string() + &v.name, v.selector));
    let from_panels = queries(&board)?.into_iter().map(|q| (format!("{} ({})", q.panel, q.ref_id), q.expr));
    for (place, expr) in from_variables.chain(from_panels) {
        let expr = substitute(&expr, &values, RATE_INTERVAL);
        ensure!(!expr.contains('$'), "{place}: a variable the dashboard does not define in {expr}");
        let names = metric_names(&expr);
        ensure!(!names.is_empty(), "{place}: names no metric of ours: {expr}");
        unknown.extend(
            names.into_iter().filter(|n| !known.contains(n.as_str())).map(|n| format!("{place}: {n}")),
        );
        parsed.push((place, expr));
    }
    ensure!(unknown.is_empty(), "the dashboard names metrics nothing serves: {unknown:#?}");
    for panel in board["panels"].as_array().into_iter().flatten().filter(|p| p["targets"].is_array()) {
        ensure!(
            panel["datasource"]["uid"] == "${datasource}",
            "panel {} has a fixed data source",
            panel["title"]
        );
    }
    promtool_parses(&parsed)?;
    println!("{} dashboard queries parse and name only known metrics", parsed.len());
    Ok(())
}

#[test]
fn the_chart_ships_the_dashboard_for_grafanas_sidecar() -> Result<()> {
    let helm = tool("helm")?;
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/hostwright");
    let versions = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/versions.env"))?;
    let k8s =
        versions.lines().find_map(|l| l.strip_prefix("KUBERNETES_VERSION=")).context("KUBERNETES_VERSION")?;
    let render = |args: &[&str]| -> Result<Vec<Value>> {
        let out = std::process::Command::new(&helm)
            .args([
                "template",
                "hostwright",
                chart,
                "--namespace",
                "hostwright-system",
                "--kube-version",
                k8s,
            ])
            .args(args)
            .output()?;
        ensure!(out.status.success(), "helm template {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout)?;
        let mut docs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(doc)?;
            if !value.is_null() {
                docs.push(value);
            }
        }
        Ok(docs)
    };
    let dashboards = |docs: &[Value]| -> Vec<Value> {
        docs.iter()
            .filter(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
            .cloned()
            .collect()
    };
    ensure!(dashboards(&render(&[])?).is_empty(), "a dashboard ConfigMap without grafanaDashboard.enabled");

    let on = render(&[
        "--set",
        "grafanaDashboard.enabled=true",
        "--set",
        "grafanaDashboard.namespace=monitoring",
        "--set",
        "grafanaDashboard.labels.team=platform",
        "--set",
        "grafanaDashboard.annotations.grafana_folder=Hostwright",
    ])?;
    let [config_map] = dashboards(&on).try_into().map_err(|d| anyhow::anyhow!("ConfigMaps: {d:?}"))?;
    let meta = &config_map["metadata"];
    ensure!(meta["namespace"] == "monitoring" && meta["labels"]["team"] == "platform", "{meta}");
    ensure!(meta["annotations"]["grafana_folder"] == "Hostwright", "{meta}");
    let shipped: Value = serde_json::from_str(
        config_map["data"]["hostwright-site.json"]
            .as_str()
            .context("no hostwright-site.json in the ConfigMap")?,
    )?;
    ensure!(shipped == dashboard()?, "the ConfigMap's dashboard is not files/dashboard.json");
    Ok(())
}

/// The first query of the panel titled `title` whose expression names `part`.
fn panel_query<'a>(all: &'a [PanelQuery], title: &str, ref_id: &str, part: &str) -> Result<&'a PanelQuery> {
    all.iter()
        .find(|q| q.panel == title && q.ref_id == ref_id && q.expr.contains(part))
        .with_context(|| format!("no query {ref_id} of panel {title:?} naming {part}"))
}

/// The labels `key` and value of each sample of an instant query.
async fn by_label(prometheus: &Prometheus, expr: &str, key: &str) -> Result<BTreeMap<String, f64>> {
    let result = prometheus.query(expr).await?;
    Ok(samples(&result)
        .into_iter()
        .map(|(labels, v)| (labels.get(key).cloned().unwrap_or_default(), v))
        .collect())
}

/// The members table of one store, as the dashboard asks for it: every
/// member of `members` has exactly one role, `primary` is the one primary
/// (the one the store's status names), and each is up, healthy and has a
/// replication position. Says who has which role.
async fn check_members(
    prometheus: &Prometheus,
    all: &[PanelQuery],
    values: &BTreeMap<String, String>,
    kind: &str,
    members: &BTreeSet<String>,
    primary: &str,
) -> Result<String> {
    let kind_label = format!("kind=\"{kind}\"");
    let ask = |ref_id: &str| -> Result<String> {
        Ok(substitute(&panel_query(all, "Members", ref_id, &kind_label)?.expr, values, RATE_INTERVAL))
    };
    let roles = samples(&prometheus.query(&ask("A")?).await?);
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (labels, _) in &roles {
        seen.entry(labels.get("member").cloned().unwrap_or_default())
            .or_default()
            .push(labels.get("role").cloned().unwrap_or_default());
    }
    let named: BTreeSet<String> = seen.keys().cloned().collect();
    ensure!(named == *members, "{kind}: roles of {named:?}, members {members:?}");
    let primaries: Vec<&String> =
        seen.iter().filter(|(_, r)| r.contains(&"primary".into())).map(|(m, _)| m).collect();
    ensure!(primaries == [primary], "{kind}: primaries {primaries:?}, the status says {primary}: {seen:?}");
    ensure!(seen.values().all(|r| r.len() == 1), "{kind}: a member with two roles: {seen:?}");
    for (ref_id, what, want) in [("B", "up", Some(1.0)), ("C", "healthy", Some(1.0)), ("F", "position", None)]
    {
        let got = by_label(prometheus, &ask(ref_id)?, "member").await?;
        let keys: BTreeSet<String> = got.keys().cloned().collect();
        ensure!(keys == *members, "{kind} {what}: {got:?}");
        ensure!(want.is_none_or(|w| got.values().all(|v| *v == w)), "{kind} {what}: {got:?}");
    }
    let roles: Vec<String> = seen.iter().map(|(m, r)| format!("{m} {}", r.join("+"))).collect();
    Ok(format!("{kind} {}", roles.join(", ")))
}

/// Every member target of the site and the operator up, and scraped often
/// enough for a rate over [`RATE_INTERVAL`] (three scrapes).
async fn wait_for_targets(prometheus: &Prometheus, members: usize) -> Result<()> {
    eventually(Duration::from_secs(60), "every target scraped and up", || async {
        let targets = prometheus.api("/api/v1/targets?state=active").await?;
        let active = targets["activeTargets"].as_array().cloned().unwrap_or_default();
        let up = active.iter().filter(|t| t["health"] == "up").count();
        let jobs = |job: &str| active.iter().filter(|t| t["labels"]["job"] == job).count();
        if up == active.len() && jobs("hostwright") == 1 && jobs("hostwright-members") == members {
            return Ok(Some(()));
        }
        let why: Vec<String> =
            active.iter().map(|t| format!("{} {} {}", t["scrapeUrl"], t["health"], t["lastError"])).collect();
        Err(anyhow::anyhow!("targets: {why:#?}"))
    })
    .await?;
    eventually(Duration::from_secs(30), "three scrapes of every target", || async {
        let scrapes = samples(&prometheus.query("min(count_over_time(up[1m]))").await?);
        Ok(scrapes.first().filter(|(_, n)| *n >= 3.0).map(|_| ()))
    })
    .await
}

/// The dashboard's variables as Grafana resolves them, each from the ones
/// before it; each must come out as `expected` says.
async fn resolve_variables(
    prometheus: &Prometheus,
    expected: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    let mut values = BTreeMap::new();
    for var in variables(&dashboard()?)? {
        let selector = substitute(&var.selector, &values, RATE_INTERVAL);
        let want = expected.get(&var.name).with_context(|| format!("no value expected for {}", var.name))?;
        let found = eventually(Duration::from_secs(30), &format!("variable {}", var.name), || async {
            let found = prometheus.label_values(&selector, &var.label).await?;
            Ok(found.contains(want).then_some(found))
        })
        .await?;
        ensure!(var.name == "namespace" || found.len() == 1, "variable {}: {found:?}", var.name);
        values.insert(var.name.clone(), want.clone());
    }
    Ok(values)
}

/// Every panel query answered: instant ones as instant queries, the others
/// over the last minute; and with data, but for those over metrics a
/// healthy site without backups, errors or failovers lacks. Returns how
/// many queries there are, and the panels without data.
async fn answer_every_query(
    prometheus: &Prometheus,
    values: &BTreeMap<String, String>,
) -> Result<(usize, Vec<String>)> {
    let all = queries(&dashboard()?)?;
    let (mut failed, mut empty) = (Vec::new(), Vec::new());
    for q in &all {
        let expr = substitute(&q.expr, values, RATE_INTERVAL);
        let answer = if q.instant {
            prometheus.query(&expr).await
        } else {
            prometheus.query_range(&expr, Duration::from_secs(60), Duration::from_secs(2)).await
        };
        let place = format!("{} ({})", q.panel, q.ref_id);
        match answer {
            Err(e) => failed.push(format!("{place}: {e:#}")),
            Ok(result) if result.as_array().is_some_and(|r| r.is_empty()) => {
                let optional = metric_names(&expr).iter().any(|m| NEEDS_A_FEATURE.contains(&m.as_str()));
                if !optional {
                    failed.push(format!("{place}: no data from {expr}"));
                }
                empty.push(place);
            }
            Ok(_) => {}
        }
    }
    ensure!(failed.is_empty(), "dashboard queries refused or without data: {failed:#?}");
    Ok((all.len(), empty))
}

/// Every alert rule evaluated and healthy, and no alert pending or firing.
async fn rules_healthy_and_quiet(prometheus: &Prometheus) -> Result<usize> {
    eventually(
        Duration::from_secs(60),
        "every rule evaluated healthy, no alert pending or firing",
        || async {
            let groups = prometheus.api("/api/v1/rules?type=alert").await?;
            let rules: Vec<Value> = groups["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            ensure!(!rules.is_empty(), "no alert rules loaded from {ALERTS}");
            let bad: Vec<String> = rules
                .iter()
                .filter(|r| r["health"] != "ok" || r["state"] != "inactive")
                .map(|r| {
                    format!("{}: health {} state {} {}", r["name"], r["health"], r["state"], r["lastError"])
                })
                .collect();
            if bad.is_empty() {
                return Ok(Some(rules.len()));
            }
            let alerts = prometheus.api("/api/v1/alerts").await?;
            Err(anyhow::anyhow!("rules: {bad:#?}\nalerts: {:#}", alerts["alerts"]))
        },
    )
    .await
}

#[tokio::test]
async fn a_real_prometheus_answers_every_dashboard_query_on_a_running_site() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let site = Site::start("monitoring").await?;
    site.sessions("shop-sessions", "replicas: 1").await?;
    site.database("shop-db", "instance: {storage: {size: 1Gi}}\nmirrors: 1").await?;
    let web: WebCluster = serde_json::from_value(json!({
        "apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster", "metadata": {"name": "shop"},
        "spec": {"image": "shop:1", "replicas": 2,
                 "sessionStoreRef": {"name": "shop-sessions"}, "databaseRef": {"name": "shop-db"}},
    }))?;
    let webs: Api<WebCluster> = site.api();
    webs.create(&PostParams::default(), &web).await?;
    let sessions = site.healthy::<SessionStore>("shop-sessions").await?;
    let db = site.healthy::<DatabaseMirror>("shop-db").await?;
    wait_web_ready(&webs, "shop", TIMEOUT).await?;
    let up_at = started.elapsed();

    let kubeconfig = std::env::var("KUBECONFIG").context("KUBECONFIG")?;
    let rules = std::path::Path::new(ALERTS);
    let operator = format!("127.0.0.1:{}", site.operator.metrics_port);
    let setup = config(&operator, std::path::Path::new(&kubeconfig), &site.ns.name, &[rules]);
    let prometheus = Prometheus::start(&setup).await?;
    wait_for_targets(&prometheus, 4).await.with_context(|| prometheus.log())?;

    let expected: BTreeMap<String, String> = [
        ("namespace", site.ns.name.as_str()),
        ("site", "shop"),
        ("session_store", "shop-sessions"),
        ("database", "shop-db"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let values = resolve_variables(&prometheus, &expected).await?;

    let all = queries(&dashboard()?)?;
    let members = |prefix: &str| -> BTreeSet<String> { (1..=2).map(|i| format!("{prefix}-{i}")).collect() };
    let session_primary = current_primary(&sessions).context("the session store's primary")?;
    let db_primary = current_primary(&db).context("the database's primary")?;
    let roles = eventually(Duration::from_secs(30), "the dashboard's core panels", || async {
        let sessions = check_members(
            &prometheus,
            &all,
            &values,
            "SessionStore",
            &members("shop-sessions"),
            &session_primary,
        )
        .await?;
        let database =
            check_members(&prometheus, &all, &values, "DatabaseMirror", &members("shop-db"), &db_primary)
                .await?;
        let replicas =
            substitute(&panel_query(&all, "Replicas", "A", "webcluster_replicas")?.expr, &values, "");
        let states = by_label(&prometheus, &replicas, "state").await?;
        let want: BTreeMap<String, f64> =
            ["available", "desired", "ready", "updated"].into_iter().map(|s| (s.to_string(), 2.0)).collect();
        ensure!(states == want, "web replicas: {states:?}");
        let leaders = panel_query(&all, "Leaders", "A", "hostwright_leader")?;
        let leaders = samples(&prometheus.query(&leaders.expr).await?);
        ensure!(leaders.len() == 1 && leaders[0].1 == 1.0, "leaders: {leaders:?}");
        Ok(Some(format!("{sessions}; {database}")))
    })
    .await?;
    println!("members as the dashboard shows them: {roles}");

    let (answered, empty) = answer_every_query(&prometheus, &values).await?;
    println!("panels without data (their features are off): {empty:?}");
    let served = prometheus.metric_names().await?;
    let unseen: Vec<&str> =
        METRICS.iter().copied().filter(|m| !served.contains(*m) && !NEEDS_A_FEATURE.contains(m)).collect();
    ensure!(unseen.is_empty(), "metrics the site should have but Prometheus never scraped: {unseen:?}");
    let stray: Vec<&String> =
        served.iter().filter(|m| m.starts_with("hostwright_") && !METRICS.contains(&m.as_str())).collect();
    if !stray.is_empty() {
        bail!("metrics served but missing from the list the dashboard is checked against: {stray:?}");
    }
    let rules = rules_healthy_and_quiet(&prometheus).await?;
    println!(
        "{}: {answered} dashboard queries answered, {rules} alert rules healthy and quiet; site up in {:.0?}, {:.0?} in all",
        Prometheus::version()?,
        up_at,
        started.elapsed()
    );
    drop(prometheus);
    site.testbed.stop().await?;
    Ok(())
}
