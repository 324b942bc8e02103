//! Who can open a TCP connection to whom, seen from inside pods on the real
//! nodes: busybox pods that serve a port (so they are Ready like any pod),
//! and `nc` run in them. For the NetworkPolicy tests.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::{eventually, kubectl_raw};

/// The test image with `sh`, `httpd` and `nc` (e2e/lib/images.sh).
pub const IMAGE: &str = "hostwright.local/busybox:1";
/// The port every probe pod serves on.
pub const PORT: u16 = 8080;
/// A connection attempt gives up after this many seconds (`nc -w`); an
/// admitted one takes about a millisecond here.
pub const CONNECT_WAIT_S: u32 = 3;

/// A busybox pod running `command` (which must serve [`PORT`]), as a
/// non-root user, on `node` when one is named.
pub fn busybox_pod(
    name: &str,
    node: Option<&str>,
    labels: &BTreeMap<String, String>,
    command: &str,
) -> Result<Pod> {
    let node_selector = node.map(|node| json!({"kubernetes.io/hostname": node}));
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeSelector": node_selector,
            "tolerations": [{"key": "hostwright.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
            "securityContext": {
                "runAsNonRoot": true, "runAsUser": 10001, "runAsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", command],
                "ports": [{"containerPort": PORT, "name": "tcp"}],
                "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 1},
                "volumeMounts": [{"name": "www", "mountPath": "/www"}],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
            "volumes": [{"name": "www", "emptyDir": {}}],
        },
    }))?)
}

/// A pod that only serves an empty page, to run `nc` in.
pub fn probe_pod(name: &str, node: Option<&str>, labels: &BTreeMap<String, String>) -> Result<Pod> {
    busybox_pod(name, node, labels, &format!("exec httpd -f -p {PORT} -h /www"))
}

/// Whether the pod's Ready condition is true.
pub fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Create the pods and wait until all are Ready; their IPs by name.
pub async fn start_pods(pods: &Api<Pod>, wanted: Vec<Pod>) -> Result<Vec<(String, String)>> {
    let names: Vec<String> = wanted.iter().filter_map(|p| p.metadata.name.clone()).collect();
    for p in &wanted {
        pods.create(&PostParams::default(), p).await?;
    }
    eventually(Duration::from_secs(120), "the pods Ready", || async {
        let mut ips = Vec::new();
        for name in &names {
            let Some(p) = pods.get_opt(name).await? else { return Ok(None) };
            let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
            match ip {
                Some(ip) if ready(&p) => ips.push((name.clone(), ip)),
                _ => return Ok(None),
            }
        }
        Ok(Some(ips))
    })
    .await
}

/// Which of `targets` (`ip:port`) pod `namespace/name` can open a TCP
/// connection to. The attempts run side by side in one `kubectl exec`, so
/// a dropped SYN costs [`CONNECT_WAIT_S`] once, not once per target.
pub fn connects(namespace: &str, name: &str, targets: &[String]) -> Result<BTreeMap<String, bool>> {
    let attempts: Vec<String> = targets
        .iter()
        .map(|target| {
            let (ip, port) = target.rsplit_once(':').context("a target is ip:port")?;
            // busybox nc runs the program after -e once connected: exit 0.
            Ok(format!(
                "(if nc -w {CONNECT_WAIT_S} {ip} {port} -e /bin/busybox true 2>/dev/null; \
                 then echo '{target} open'; else echo '{target} closed'; fi) &"
            ))
        })
        .collect::<Result<_>>()?;
    let script = format!("{} wait", attempts.join(" "));
    let out = kubectl_raw(&["-n", namespace, "exec", name, "--", "sh", "-c", &script])?;
    ensure!(
        out.status.success(),
        "nc in {namespace}/{name}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verdicts: BTreeMap<String, bool> = stdout
        .lines()
        .filter_map(|line| line.rsplit_once(' '))
        .map(|(target, verdict)| (target.to_string(), verdict == "open"))
        .collect();
    for target in targets {
        ensure!(verdicts.contains_key(target), "no verdict on {target} from {namespace}/{name}: {stdout}");
    }
    Ok(verdicts)
}
