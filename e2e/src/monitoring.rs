//! The chart's monitoring files checked against the real thing: the Grafana
//! dashboard's queries (`charts/hostwright/files/dashboard.json`) parsed by
//! promtool and answered by a real Prometheus, the alert rules
//! (`charts/hostwright/files/alerts.yaml`) loaded by it.
//!
//! A [`Prometheus`] is a real server (the binary `e2e/cluster build` makes,
//! found on `PATH` or through `e2e/cluster env`) scraping what the chart's
//! monitors would: the store members' agents found through the API server
//! (Kubernetes service discovery, the PodMonitor's selection) and an
//! operator process. The test bed's member pods keep their pod addresses in
//! the API while their agents listen on the loopback twins (see
//! [`crate::testbed::twin`]), so the scrape config maps one to the other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::eventually;

/// The dashboard the chart ships.
pub const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/hostwright/files/dashboard.json");
/// The alert rules the chart ships, as Prometheus rule groups.
pub const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/hostwright/files/alerts.yaml");

/// Every metric the operator and the agents serve, as Prometheus stores
/// them (counters with `_total`, histograms by their series), from the
/// metric contract in `docs/monitoring.md`. The dashboard may name no other;
/// the e2e test proves the code serves each (see [`NEEDS_A_FEATURE`]).
pub const METRICS: &[&str] = &[
    // The agent, in every store member pod.
    "hostwright_member_up",
    "hostwright_member_role",
    "hostwright_member_epoch",
    "hostwright_member_position_bytes",
    "hostwright_member_lag_bytes",
    "hostwright_member_lag_seconds",
    "hostwright_member_connections",
    "hostwright_member_commits_total",
    "hostwright_member_commands_total",
    "hostwright_member_writes_blocked",
    "hostwright_member_certificate_expiry_timestamp_seconds",
    "hostwright_member_archive_failing",
    "hostwright_member_archive_last_success_timestamp_seconds",
    "hostwright_member_redis_memory_bytes",
    "hostwright_member_redis_clients",
    "hostwright_member_redis_keys",
    // The operator.
    "hostwright_reconciliations_total",
    "hostwright_reconcile_errors_total",
    "hostwright_reconcile_duration_seconds_bucket",
    "hostwright_reconcile_duration_seconds_sum",
    "hostwright_reconcile_duration_seconds_count",
    "hostwright_api_writes_total",
    "hostwright_leader",
    "hostwright_failovers_total",
    "hostwright_failover_duration_seconds_bucket",
    "hostwright_failover_duration_seconds_sum",
    "hostwright_failover_duration_seconds_count",
    "hostwright_object_condition",
    "hostwright_store_member_healthy",
    "hostwright_store_member_lag_bytes",
    "hostwright_store_failover_max_lag_bytes",
    "hostwright_store_failover_count",
    "hostwright_store_rollout_halted",
    "hostwright_store_backup_last_success_timestamp_seconds",
    "hostwright_store_backup_failing",
    "hostwright_webcluster_replicas",
    "hostwright_webcluster_info",
];

/// Metrics a healthy site without backups, errors or failovers has no
/// series of: the e2e test cannot see them served.
pub const NEEDS_A_FEATURE: &[&str] = &[
    "hostwright_member_archive_failing",
    "hostwright_member_archive_last_success_timestamp_seconds",
    "hostwright_store_backup_last_success_timestamp_seconds",
    "hostwright_store_backup_failing",
    "hostwright_reconcile_errors_total",
    "hostwright_failovers_total",
    "hostwright_failover_duration_seconds_bucket",
    "hostwright_failover_duration_seconds_sum",
    "hostwright_failover_duration_seconds_count",
];

/// One query of one dashboard panel.
#[derive(Clone, Debug, PartialEq)]
pub struct PanelQuery {
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
    /// Grafana asks for one instant (tables, stats) rather than a range.
    pub instant: bool,
}

/// A template variable whose values come from `label_values(selector, label)`.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelValues {
    pub name: String,
    pub selector: String,
    pub label: String,
}

/// The dashboard as JSON.
pub fn dashboard() -> Result<Value> {
    let text = std::fs::read_to_string(DASHBOARD).with_context(|| format!("reading {DASHBOARD}"))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {DASHBOARD}"))
}

/// Every panel query, rows' nested panels included.
pub fn queries(dashboard: &Value) -> Result<Vec<PanelQuery>> {
    let mut out = Vec::new();
    let panels = dashboard["panels"].as_array().context("a dashboard without panels")?;
    let nested = panels.iter().flat_map(|p| p["panels"].as_array().into_iter().flatten());
    for panel in panels.iter().chain(nested) {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr =
                target["expr"].as_str().with_context(|| format!("panel {title:?}: a target without expr"))?;
            out.push(PanelQuery {
                panel: title.to_string(),
                ref_id: target["refId"].as_str().unwrap_or_default().to_string(),
                expr: expr.to_string(),
                instant: target["instant"].as_bool().unwrap_or(false),
            });
        }
    }
    Ok(out)
}

/// The dashboard's `label_values(...)` variables, in order (each may use
/// the ones before it).
pub fn variables(dashboard: &Value) -> Result<Vec<LabelValues>> {
    let list = dashboard["templating"]["list"].as_array().context("a dashboard without variables")?;
    let mut out = Vec::new();
    for var in list.iter().filter(|v| v["type"] == "query") {
        let name = var["name"].as_str().context("a variable without a name")?;
        let definition = var["query"]["query"].as_str().or(var["definition"].as_str()).unwrap_or_default();
        let (selector, label) = parse_label_values(definition).with_context(|| {
            format!("variable {name}: {definition:?} is not label_values(selector, label)")
        })?;
        out.push(LabelValues { name: name.to_string(), selector, label });
    }
    Ok(out)
}

/// `label_values(selector, label)` split, or `None`.
pub fn parse_label_values(definition: &str) -> Option<(String, String)> {
    let inner = definition.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    let label = label.trim();
    let valid = !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then(|| (selector.trim().to_string(), label.to_string()))
}

/// `text` with Grafana's variables replaced: `${name}` and `$name` from
/// `values`, and `$__rate_interval` by `rate_interval`. A longer name is
/// replaced before a shorter one it starts with.
pub fn substitute(text: &str, values: &BTreeMap<String, String>, rate_interval: &str) -> String {
    let mut out =
        text.replace("$__rate_interval", rate_interval).replace("${__rate_interval}", rate_interval);
    let mut names: Vec<&String> = values.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        out = out.replace(&format!("${{{name}}}"), &values[name]).replace(&format!("${name}"), &values[name]);
    }
    out
}

/// The metric names an expression uses: identifiers starting `hostwright_`
/// outside quoted strings (every metric of ours starts so).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut unquoted = String::new();
    let mut quote = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if matches!(c, '"' | '\'' | '`') => {
                quote = Some(c);
                unquoted.push(' ');
            }
            None => unquoted.push(c),
        }
    }
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut rest = unquoted.as_str();
    while let Some(at) = rest.find("hostwright_") {
        let starts_word = rest[..at].chars().next_back().is_none_or(|c| !ident(c));
        let len = rest[at..].find(|c: char| !ident(c)).unwrap_or(rest.len() - at);
        if starts_word {
            names.insert(rest[at..at + len].to_string());
        }
        rest = &rest[at + len..];
    }
    names
}

/// An executable of the local control plane's tools: on `PATH`, else on
/// the `PATH` `e2e/cluster env` prints (where `e2e/cluster build` puts it).
pub fn tool(name: &str) -> Result<PathBuf> {
    let here = std::env::var("PATH").unwrap_or_default();
    let cluster = crate::cluster_env().ok().and_then(|env| env.get("PATH").cloned()).unwrap_or_default();
    let found = here
        .split(':')
        .chain(cluster.split(':'))
        .filter(|dir| !dir.is_empty() && !dir.starts_with('$'))
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file());
    found.with_context(|| format!("{name} is neither on PATH nor built (`e2e/cluster build`)"))
}

/// Parse every expression with promtool: each becomes a recording rule of
/// a rule file that `promtool check rules` reads (it parses bare
/// expressions nowhere else). Fails naming the panel of an expression that
/// does not parse.
pub fn promtool_parses(queries: &[(String, String)]) -> Result<()> {
    let promtool = tool("promtool")?;
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| json!({"record": format!("dashboard:query_{i}"), "expr": expr}))
        .collect();
    let file = std::env::temp_dir().join(format!("hostwright-dashboard-rules-{}.yaml", std::process::id()));
    let groups = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, serde_yaml::to_string(&groups)?)?;
    let out = Command::new(&promtool).args(["check", "rules"]).arg(&file).output();
    let _ = std::fs::remove_file(&file);
    let out = out.with_context(|| format!("running {}", promtool.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let culprits: Vec<&str> = queries
        .iter()
        .enumerate()
        .filter(|(i, _)| said.contains(&format!("dashboard:query_{i}\"")))
        .map(|(_, (panel, _))| panel.as_str())
        .collect();
    bail!("promtool refuses the dashboard's queries (panels {culprits:?}):\n{said}")
}

/// Percent-encoding of a query parameter (RFC 3986 unreserved kept).
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The scrape configuration of a test: the operator at `operator` (as the
/// chart's ServiceMonitor scrapes it: the job is the metrics Service's
/// name, labels honoured), and the store members of `namespace` as the
/// chart's PodMonitor selects them (pods managed by Hostwright that carry
/// a member label, their `agent` port, `/metrics`), each at the loopback
/// twin of its address.
pub fn config(operator: &str, kubeconfig: &Path, namespace: &str, rule_files: &[&Path]) -> Value {
    let relabel = |source: &str, target: &str| json!({"source_labels": [source], "target_label": target});
    json!({
        // Short, so the test waits little; a scrape may take the whole
        // interval on a busy machine without counting as a failure.
        "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "1s"},
        "rule_files": rule_files,
        "scrape_configs": [
            {
                "job_name": "hostwright",
                "honor_labels": true,
                "static_configs": [{"targets": [operator]}],
            },
            {
                "job_name": "hostwright-members",
                "kubernetes_sd_configs": [{
                    "role": "pod",
                    "kubeconfig_file": kubeconfig,
                    "namespaces": {"names": [namespace]},
                }],
                "metrics_path": "/metrics",
                "relabel_configs": [
                    {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_managed_by"],
                     "regex": "hostwright", "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_pod_labelpresent_hostwright_io_member"],
                     "regex": "true", "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_pod_container_port_name"],
                     "regex": "agent", "action": "keep"},
                    relabel("__meta_kubernetes_namespace", "namespace"),
                    relabel("__meta_kubernetes_pod_name", "pod"),
                    relabel("__meta_kubernetes_pod_container_name", "container"),
                    // The test bed: the agent behind pod address 10.x.c.d
                    // listens on 127.x.c.d.
                    {"source_labels": ["__address__"], "regex": r"10\.(\d+)\.(\d+)\.(\d+):(\d+)",
                     "replacement": "127.$1.$2.$3:$4", "target_label": "__address__"},
                ],
            },
        ],
    })
}

/// A real Prometheus server on a loopback port, with a data directory of
/// its own; killed when dropped.
pub struct Prometheus {
    child: Option<Child>,
    pub address: String,
    dir: PathBuf,
}

impl Prometheus {
    /// Start Prometheus with `config` and wait until it is ready.
    pub async fn start(config: &Value) -> Result<Self> {
        let binary = tool("prometheus")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join("hostwright-e2e").join(format!("prometheus-{port}"));
        std::fs::create_dir_all(dir.join("data"))?;
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, serde_yaml::to_string(config)?)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let prometheus = Self { child: Some(child), address, dir };
        eventually(Duration::from_secs(30), "Prometheus ready", || async {
            Ok(crate::http_get(&prometheus.address, "/-/ready")
                .await
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ()))
        })
        .await
        .with_context(|| prometheus.log())?;
        Ok(prometheus)
    }

    /// `GET path` of the HTTP API; its `data` when the status is success.
    pub async fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = crate::http_get(&self.address, path).await?;
        let answer: Value =
            serde_json::from_str(&body).with_context(|| format!("GET {path}: {status} {body}"))?;
        ensure!(
            status == 200 && answer["status"] == "success",
            "GET {path}: {status} {}: {}",
            answer["errorType"],
            answer["error"]
        );
        Ok(answer["data"].clone())
    }

    /// An instant query's result (a vector's samples, or a scalar).
    pub async fn query(&self, expr: &str) -> Result<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encode(expr))).await?;
        Ok(data["result"].clone())
    }

    /// A range query over the last `span`, a point per `step`.
    pub async fn query_range(&self, expr: &str, span: Duration, step: Duration) -> Result<Value> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
        let path = format!(
            "/api/v1/query_range?query={}&start={:.3}&end={now:.3}&step={}",
            percent_encode(expr),
            now - span.as_secs_f64(),
            step.as_secs_f64()
        );
        Ok(self.api(&path).await?["result"].clone())
    }

    /// The values `label` takes on the series `selector` matches, as
    /// Grafana's `label_values(selector, label)` finds them.
    pub async fn label_values(&self, selector: &str, label: &str) -> Result<BTreeSet<String>> {
        let series = self.api(&format!("/api/v1/series?match[]={}", percent_encode(selector))).await?;
        Ok(series
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s[label].as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Every metric name Prometheus holds samples of.
    pub async fn metric_names(&self) -> Result<BTreeSet<String>> {
        let names = self.api("/api/v1/label/__name__/values").await?;
        Ok(names.as_array().into_iter().flatten().filter_map(|n| n.as_str()).map(str::to_string).collect())
    }

    /// Prometheus' log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `prometheus --version`'s first line.
    pub fn version() -> Result<String> {
        let out = Command::new(tool("prometheus")?).arg("--version").output()?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `(labels, value)` of each sample of an instant vector.
pub fn samples(result: &Value) -> Vec<(BTreeMap<String, String>, f64)> {
    result
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let labels = s["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let value = s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
            (labels, value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_outside_strings_only() {
        let expr = r#"max by (member) (hostwright_member_role{kind="hostwright_not_a_metric"}) == 1
            / on() hostwright_store_failover_count offset 5m + my_hostwright_thing"#;
        let names: Vec<String> = metric_names(expr).into_iter().collect();
        assert_eq!(names, ["hostwright_member_role", "hostwright_store_failover_count"]);
        assert!(
            metric_names(r#"rate(hostwright_api_writes_total[5m])"#).contains("hostwright_api_writes_total")
        );
    }

    #[test]
    fn variables_are_replaced_longest_name_first() {
        let values = BTreeMap::from([
            ("site".to_string(), "shop".to_string()),
            ("session_store".to_string(), "shop-sessions".to_string()),
        ]);
        let expr = r#"x{name="$site",store="${session_store}"}[$__rate_interval] $session_store"#;
        assert_eq!(
            substitute(expr, &values, "10s"),
            r#"x{name="shop",store="shop-sessions"}[10s] shop-sessions"#
        );
    }

    #[test]
    fn label_values_definitions_split() {
        assert_eq!(
            parse_label_values(r#"label_values(hostwright_webcluster_info{namespace="$namespace"}, name)"#),
            Some((r#"hostwright_webcluster_info{namespace="$namespace"}"#.into(), "name".into()))
        );
        assert_eq!(parse_label_values("query_result(up)"), None);
    }

    #[test]
    fn query_parameters_are_percent_encoded() {
        assert_eq!(percent_encode(r#"up{a="b c"}[1m]"#), "up%7Ba%3D%22b%20c%22%7D%5B1m%5D");
    }
}
