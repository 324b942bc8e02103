//! `latest.json` and `latest.md`, shared by the suites.
//!
//! Each suite owns the keys that start with its name and a dot
//! (`webcluster.*`, `failover.*`, `sessionstore.*`, `chaos.*`, `lifecycle.*`, `site.*`). A suite's results replace its own keys in
//! `latest.json` and leave the other suites' alone, so running one suite
//! keeps the figures of the last run of another. `latest.md` is rendered
//! from the merged `latest.json` alone: one section per suite present.
//!
//! The webcluster suite's keys: flat ones for the largest fleet, plus every
//! run; its section has tables, targets, method and the plot.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use crate::{Config, Suite};

/// (key, target, unit); every figure is better lower.
const TARGETS: [(&str, f64, &str); 5] = [
    ("ready_ratio_vs_direct", 1.3, "×"),
    ("change_p99_s", 1.0, "s"),
    ("idle_writes", 0.0, "writes"),
    // Steady: the operator that built the fleet, after the idle window.
    ("rss_end_mib", 32.0, "MiB"),
    // A restarted operator's peak: every cache filled from a full list.
    ("rss_restart_mib", 40.0, "MiB"),
];

/// The figures of `suite` in `out` above their target, as lines for the
/// report: `(key, target, unit)`, every figure better lower.
pub fn targets_missed(out: &Map<String, Value>, suite: &str, targets: &[(&str, f64, &str)]) -> Vec<String> {
    targets
        .iter()
        .filter_map(|(key, target, unit)| {
            let v = out.get(&format!("{suite}.{key}")).and_then(Value::as_f64)?;
            (v > *target).then(|| format!("{suite}.{key} = {v} {unit} (target ≤ {target})"))
        })
        .collect()
}

/// The side-by-side restarts of the baseline build and this one, if run.
fn memory_markdown(md: &mut String, complete: &[&Value]) {
    let compared: Vec<&&Value> = complete.iter().filter(|r| !r["memory"].is_null()).collect();
    if compared.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Memory before and after, side by side\n");
    let _ =
        writeln!(md, "| N | rounds | build | restart peak, VmHWM (MiB) | settled, VmRSS (MiB) | writes |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for r in compared {
        let m = &r["memory"];
        for (build, key) in [("baseline", "baseline"), ("this build", "candidate")] {
            let _ = writeln!(
                md,
                "| {} | {} | {build} | {} | {} | {} |",
                r["n"],
                num(&m["rounds"]),
                num(&m[key]["peak_mib"]),
                num(&m[key]["settled_mib"]),
                num(&m[key]["writes"]),
            );
        }
        let _ = writeln!(
            md,
            "\nN = {}: this build ÷ baseline, peak {}, settled {} (baseline `{}`).\n",
            r["n"],
            num(&m["peak_ratio"]),
            num(&m["settled_ratio"]),
            m["baseline_binary"].as_str().unwrap_or("?"),
        );
    }
}

fn missed_in(run: &Value) -> Vec<String> {
    TARGETS
        .iter()
        .filter_map(|(key, target, unit)| {
            let v = run[*key].as_f64()?;
            (v > *target).then(|| format!("N={} {key} = {v} {unit} (target ≤ {target})", run["n"]))
        })
        .collect()
}

/// Merge the webcluster suite's figures into both files; returns the
/// targets missed (by any fleet size).
pub fn write(cfg: &Config, runs: &[Value], elapsed: Duration) -> Result<Vec<String>> {
    let complete: Vec<&Value> = runs.iter().filter(|r| r.get("error").is_none()).collect();
    let headline = complete.iter().max_by_key(|r| r["n"].as_u64().unwrap_or(0)).copied();
    let mut out = Map::new();
    if let Some(h) = headline {
        out.insert("webcluster.n".into(), h["n"].clone());
        for key in [
            "ready_ratio_vs_direct",
            "ready_ratio_vs_direct_available",
            "change_p50_s",
            "change_p99_s",
            "idle_writes",
            "idle_objects_changed_by_hostwright",
            "idle_resource_versions_changed",
            "rss_mib",
            "rss_end_mib",
            "rss_restart_mib",
            "rss_restart_end_mib",
        ] {
            out.insert(format!("webcluster.{key}"), h[key].clone());
        }
    }
    out.insert(
        "webcluster.targets".into(),
        json!({"ready_ratio_vs_direct": 1.3, "change_p99_s": 1.0, "idle_writes": 0, "rss_end_mib": 32, "rss_restart_mib": 40}),
    );
    let all_missed: Vec<String> = complete.iter().flat_map(|r| missed_in(r)).collect();
    out.insert("webcluster.targets_missed".into(), json!(all_missed));
    out.insert("webcluster.runs".into(), json!(runs));
    out.insert(
        "webcluster.settings".into(),
        json!({
            "sizes": cfg.sizes,
            "replicas": crate::fleet::REPLICAS,
            "concurrency": cfg.concurrency,
            "change_sample": cfg.change_sample,
            "change_interval_ms": cfg.change_interval.as_millis() as u64,
            "idle_seconds": cfg.idle.as_secs(),
            "pod_ready_delay_ms": std::env::var("HOSTWRIGHT_POD_READY_DELAY_MS").unwrap_or_else(|_| "2000".into()),
            "nodes": std::env::var("HOSTWRIGHT_NODES").ok(),
            "node_cpu": std::env::var("BENCH_NODE_CPU").ok(),
            "node_memory": std::env::var("BENCH_NODE_MEMORY").ok(),
            "node_max_pods": std::env::var("HOSTWRIGHT_NODE_MAX_PODS").ok(),
            "git_commit": std::env::var("BENCH_GIT_COMMIT").ok(),
            "src_uncommitted_changes": std::env::var("BENCH_GIT_DIRTY").ok().map(|v| v == "1"),
            "started_at": std::env::var("BENCH_STARTED_AT").ok(),
        }),
    );
    out.insert("webcluster.wall_s".into(), json!(elapsed.as_secs()));
    merge(&cfg.results, Suite::WebCluster, out)?;
    Ok(all_missed)
}

/// Replace `suite`'s keys in `<results>/latest.json` by `keys` (which must
/// all carry its prefix), keep every other key, and render `latest.md` from
/// the result. A `latest.json` that is not a JSON object is left untouched
/// (an error), never overwritten.
pub fn merge(results: &Path, suite: Suite, keys: Map<String, Value>) -> Result<()> {
    let prefix = format!("{}.", suite.name());
    if let Some(stray) = keys.keys().find(|k| !k.starts_with(&prefix)) {
        bail!("the {} suite may not write the key {stray}", suite.name());
    }
    let path = results.join("latest.json");
    let mut all = match std::fs::read_to_string(&path) {
        Ok(text) => match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => bail!("{} is not a JSON object: move it away to start afresh", path.display()),
            Err(e) => bail!("{} does not parse ({e}): move it away to start afresh", path.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    all.retain(|k, _| !k.starts_with(&prefix));
    all.extend(keys);
    let json = serde_json::to_string_pretty(&Value::Object(all.clone()))?;
    replace(&path, &(json + "\n"))?;
    replace(&results.join("latest.md"), &markdown(&all))
}

/// Write `path` through a temporary file beside it, so a reader (or an
/// interrupted run) never sees half a report.
fn replace(path: &Path, text: &str) -> Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".tmp");
    std::fs::write(&partial, text).with_context(|| format!("writing {}", Path::new(&partial).display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("replacing {}", path.display()))
}

/// `latest.md`: a section for every suite with figures in `all`.
fn markdown(all: &Map<String, Value>) -> String {
    let mut md = String::new();
    if all.contains_key("webcluster.runs") {
        md.push_str(&webcluster_markdown(all));
    }
    if all.contains_key("failover.runs") {
        if !md.is_empty() {
            md.push('\n');
        }
        md.push_str(&crate::failover::markdown(all));
    }
    if all.contains_key("sessionstore.runs") {
        if !md.is_empty() {
            md.push('\n');
        }
        md.push_str(&crate::sessionstore::markdown(all));
    }
    if all.contains_key("chaos.runs") {
        if !md.is_empty() {
            md.push('\n');
        }
        md.push_str(&crate::chaos::markdown(all));
    }
    if all.contains_key("lifecycle.settings") {
        if !md.is_empty() {
            md.push('\n');
        }
        md.push_str(&crate::lifecycle::markdown(all));
    }
    if all.contains_key("site.events") {
        if !md.is_empty() {
            md.push('\n');
        }
        md.push_str(&crate::site::markdown(all));
    }
    if all.contains_key("backup.settings") {
        if !md.is_empty() {
            md.push('\n');
        }
        md.push_str(&crate::backup::markdown(all));
    }
    md
}

pub fn num(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// "Every target met." or the list of `missed` (a JSON array of strings).
pub fn missed_markdown(md: &mut String, missed: &Value) {
    let missed: Vec<&str> = missed.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if missed.is_empty() {
        let _ = writeln!(md, "Every target met.\n");
    } else {
        let _ = writeln!(md, "Targets missed:\n");
        for m in missed {
            let _ = writeln!(md, "- {m}");
        }
        md.push('\n');
    }
}

/// The webcluster section, from its keys alone (so that it can be rendered
/// again when only another suite ran).
fn webcluster_markdown(out: &Map<String, Value>) -> String {
    let mut md = String::new();
    // A Map panics on a missing key; a hand-edited file may lack one.
    let get = |key: &str| out.get(key).unwrap_or(&Value::Null);
    let settings = get("webcluster.settings");
    let runs: &[Value] = get("webcluster.runs").as_array().map_or(&[], |r| r.as_slice());
    let _ = writeln!(md, "# WebCluster benchmark\n");
    let _ = writeln!(
        md,
        "Generated by `make bench` (`bench/run`) on the local control plane (real kube-apiserver, \
         controller-manager, scheduler and etcd; {} KWOK fake nodes of {} CPUs, pods Ready {} ms after \
         they start). Commit `{}`{}; total wall time {} s.\n",
        settings["nodes"].as_str().unwrap_or("?"),
        settings["node_cpu"].as_str().unwrap_or("?"),
        settings["pod_ready_delay_ms"].as_str().unwrap_or("?"),
        settings["git_commit"].as_str().unwrap_or("?"),
        if settings["src_uncommitted_changes"] == json!(true) {
            " with uncommitted changes in src/"
        } else {
            ""
        },
        num(get("webcluster.wall_s")),
    );
    let _ = writeln!(md, "![time to Ready and change latency](latest.png)\n");

    let _ = writeln!(md, "## Figures against the targets\n");
    let complete: Vec<&Value> = runs.iter().filter(|r| r.get("error").is_none()).collect();
    let _ = write!(md, "| figure | target |");
    for r in &complete {
        let _ = write!(md, " N = {} |", r["n"]);
    }
    let _ = write!(md, "\n|---|---|");
    for _ in &complete {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    let rows: [(&str, &str, &str); 13] = [
        ("time to all Ready, operator ÷ direct (ready & updated)", "≤ 1.3", "ready_ratio_vs_direct"),
        (
            "… operator ÷ direct (available, as WebCluster Ready requires)",
            "–",
            "ready_ratio_vs_direct_available",
        ),
        ("spec change → Deployment updated, p50 (s)", "–", "change_p50_s"),
        ("spec change → Deployment updated, p99 (s)", "≤ 1", "change_p99_s"),
        ("operator writes while idle (metric)", "0", "idle_writes"),
        (
            "objects the operator changed while idle (managedFields)",
            "0",
            "idle_objects_changed_by_hostwright",
        ),
        (
            "objects whose resourceVersion changed while idle (any writer)",
            "–",
            "idle_resource_versions_changed",
        ),
        ("operator RSS after the idle window, VmRSS (MiB)", "≤ 32", "rss_end_mib"),
        ("… its peak while it built the fleet, VmHWM (MiB)", "–", "rss_mib"),
        ("peak RSS of a fresh operator restarted on the Ready fleet, VmHWM (MiB)", "≤ 40", "rss_restart_mib"),
        ("… its RSS once settled, VmRSS (MiB)", "–", "rss_restart_end_mib"),
        ("operator CPU time, whole run (s)", "–", "operator_cpu_s"),
        ("operator reconciles, whole run", "–", "operator_reconciles_total"),
    ];
    for (label, target, key) in rows {
        let _ = write!(md, "| {label} | {target} |");
        for r in &complete {
            let _ = write!(md, " {} |", num(&r[key]));
        }
        md.push('\n');
    }
    md.push('\n');
    missed_markdown(&mut md, get("webcluster.targets_missed"));
    for r in runs.iter().filter(|r| r.get("error").is_some()) {
        let _ = writeln!(
            md,
            "**N = {} could not be measured:** {}\n",
            r["n"],
            r["error"].as_str().unwrap_or("?")
        );
    }

    let _ = writeln!(md, "## Phases (seconds)\n");
    let _ = write!(md, "| phase | measure |");
    for r in &complete {
        let _ = write!(md, " N = {} |", r["n"]);
    }
    let _ = write!(md, "\n|---|---|");
    for _ in &complete {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    let phase_rows: [(&str, &str, &str, &str); 21] = [
        ("direct", "apply 3N objects", "direct", "apply_s"),
        ("direct", "all Deployments ready & updated", "direct", "ready_s"),
        ("direct", "all Deployments available", "direct", "available_s"),
        ("operator", "apply N WebClusters", "operator", "apply_s"),
        ("operator", "all Deployments ready & updated", "operator", "deployments_ready_s"),
        ("operator", "all Deployments available", "operator", "deployments_available_s"),
        ("operator", "all WebClusters Ready", "operator", "ready_s"),
        ("operator", "writes until Ready", "operator", "writes"),
        ("operator", "reconciles until Ready", "operator", "reconciles"),
        ("operator", "mean reconcile (ms)", "operator", "reconcile_mean_ms"),
        ("operator", "CPU until Ready (s)", "operator", "cpu_s"),
        ("change", "p90 (s)", "change", "p90_s"),
        ("change", "max (s)", "change", "max_s"),
        ("change", "changed sites rolled out and Ready again", "change", "rollouts_ready_s"),
        ("idle", "seconds idle", "idle", "seconds"),
        ("idle", "reconciles while idle", "idle", "reconciles"),
        ("idle", "operator CPU while idle (s)", "idle", "cpu_s"),
        ("restart", "caches filled (s)", "restart", "caches_filled_s"),
        ("restart", "every WebCluster reconciled (s)", "restart", "all_reconciled_s"),
        ("restart", "writes by the restarted operator", "restart", "writes"),
        ("restart", "CPU of the restarted operator (s)", "restart", "cpu_s"),
    ];
    for (phase, label, obj, key) in phase_rows {
        let _ = write!(md, "| {phase} | {label} |");
        for r in &complete {
            let _ = write!(md, " {} |", num(&r[obj][key]));
        }
        md.push('\n');
    }
    let _ = write!(
        md,
        "| host | mean / max 1-min load average ({} CPUs) |",
        complete.first().map_or(json!(0), |r| r["host"]["cpus"].clone())
    );
    for r in &complete {
        let _ = write!(md, " {} / {} |", num(&r["host"]["loadavg1_mean"]), num(&r["host"]["loadavg1_max"]));
    }
    md.push('\n');
    let _ = write!(md, "| host | the e2e test cluster ran beside the bench |");
    for r in &complete {
        let _ = write!(md, " {} |", num(&r["host"]["test_cluster_running"]));
    }
    md.push_str("\n\n");

    for r in &complete {
        let idle = &r["idle"];
        let _ = writeln!(
            md,
            "Idle, N = {}: operator writes by resource {}; resourceVersions changed by kind {}; \
             objects changed by field manager {}; WebClusters still Ready at the end: {}/{}.\n",
            r["n"],
            idle["writes_by_resource"],
            idle["resource_versions_changed"],
            idle["changed_by_manager"],
            idle["web_clusters_ready_at_end"],
            r["n"],
        );
    }

    memory_markdown(&mut md, &complete);

    let _ = writeln!(md, "## Method\n");
    let _ = writeln!(
        md,
        "For each N, in one cluster, back to back:\n\n\
         1. **Direct.** In namespace `bench-direct-N`, server-side apply the Deployment, Service and \
         PodDisruptionBudget that `hostwright::resources::webcluster::build` makes for each site \
         (ownerReferences stripped), {c} requests at a time, and watch the Deployments until every one \
         has `readyReplicas == updatedReplicas == 3` (also recorded: `availableReplicas == 3`, which takes \
         the Deployment's `minReadySeconds` longer). The namespace is then deleted and waited for.\n\
         2. **Operator.** A fresh `hostwright run --leader-elect=false` (all namespaces). In namespace \
         `bench-operator-N`, apply N WebClusters (`image: site:1`, `replicas: 3`), {c} at a time, and watch \
         them until every one has condition Ready=True with `observedGeneration == metadata.generation`. \
         The ratio divides this time by the direct time; both clocks start at the first apply.\n\
         3. **Change.** Merge-patch `spec.image` of {s} sites spread over the fleet, one every {i} ms; \
         from a Deployment watch, the latency is the time from the patch response to the first Deployment \
         version whose pod template carries the new image. Then wait until those sites are Ready again.\n\
         4. **Idle.** Wait until the operator's `hostwright_api_writes_total` has not moved for 10 s, \
         record it and every WebCluster's, Deployment's, Service's and PDB's resourceVersion and \
         managedFields, wait {idle} s, and compare: the metric delta is the headline; changed \
         resourceVersions are split by the field manager whose managedFields entry changed (`hostwright` \
         is the operator; a status write within the same second as the previous one can change a \
         resourceVersion without a visible managedFields change).\n\
         5. **Memory.** VmRSS (steady) and VmHWM (peak) of the operator process from \
         `/proc/<pid>/status` after the idle phase.\n\
         6. **Restart.** A second fresh operator on the Ready fleet (what a leader handover or an \
         upgrade starts): once it has reconciled every WebCluster and its write counter is still for \
         10 s, its VmHWM, its VmRSS and its writes (expected: none).\n\
         7. **Before and after** (with `BENCH_BASELINE_BIN`): fresh operators of the baseline build and \
         of this one restarted in turn on the same Ready fleet, each measured as in 6.; medians.\n\n\
         Clocks are the bench driver's (monotonic), events are timestamped when the watch delivers them. \
         Percentiles are nearest-rank. The machine also runs the control plane itself, so the figures \
         include its contention for the CPUs.\n",
        c = num(&settings["concurrency"]),
        s = num(&settings["change_sample"]),
        i = num(&settings["change_interval_ms"]),
        idle = num(&settings["idle_seconds"]),
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hostwright-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn keys(pairs: Value) -> Map<String, Value> {
        pairs.as_object().unwrap().clone()
    }

    #[test]
    fn a_suite_replaces_its_own_keys_and_keeps_the_others() {
        let dir = scratch("merge");
        let before = json!({
            "webcluster.n": 1000,
            "webcluster.runs": [],
            "failover.trials": 20,
            "failover.gone": true,
        });
        std::fs::write(dir.join("latest.json"), before.to_string()).unwrap();
        merge(&dir, Suite::Failover, keys(json!({"failover.trials": 3, "failover.runs": []}))).unwrap();
        let after: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("latest.json")).unwrap()).unwrap();
        assert_eq!(
            after,
            json!({"webcluster.n": 1000, "webcluster.runs": [], "failover.trials": 3, "failover.runs": []})
        );
        let md = std::fs::read_to_string(dir.join("latest.md")).unwrap();
        let web = md.find("# WebCluster benchmark").unwrap();
        let failover = md.find("# DatabaseMirror failover benchmark").unwrap();
        assert!(web < failover, "webcluster first");
        assert!(!dir.join("latest.json.tmp").exists());

        // The first suite to run in an empty directory renders only itself.
        let empty = scratch("merge-empty");
        merge(&empty, Suite::Failover, keys(json!({"failover.runs": []}))).unwrap();
        let md = std::fs::read_to_string(empty.join("latest.md")).unwrap();
        assert!(md.starts_with("# DatabaseMirror failover benchmark"));
        assert!(!md.contains("WebCluster benchmark"));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&empty);
    }

    #[test]
    fn a_suite_writes_only_its_own_keys_and_never_over_a_broken_file() {
        let dir = scratch("merge-refused");
        let stray = merge(&dir, Suite::Failover, keys(json!({"webcluster.n": 1})));
        assert!(stray.unwrap_err().to_string().contains("may not write the key webcluster.n"));
        std::fs::write(dir.join("latest.json"), "{ half").unwrap();
        let broken = merge(&dir, Suite::Failover, keys(json!({"failover.trials": 1})));
        assert!(broken.unwrap_err().to_string().contains("does not parse"));
        assert_eq!(std::fs::read_to_string(dir.join("latest.json")).unwrap(), "{ half");
        assert!(!dir.join("latest.md").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
