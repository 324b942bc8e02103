//! NetworkPolicy is enforced on the real nodes of the local cluster
//! (kube-network-policies beside each kubelet, e2e/lib/nodes.sh).
//!
//! A TCP server on one node, clients on the same node (their packets cross
//! the node's pod bridge: br_netfilter) and on the other (routed between
//! the nodes), in the server's namespace and in another. Before any policy
//! every client reaches the server; once a NetworkPolicy admits only the
//! server namespace's pods labelled `access=granted`, those still connect
//! on both paths and every other client (no label, or the label in another
//! namespace, or this machine itself) times out, while the kubelet's probes
//! keep the server Ready. How long the node took to enforce the new policy
//! (and to lift it again) is measured from this machine, whose connections
//! are judged by the same node and policy, and printed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hostwright_e2e::reachability::{CONNECT_WAIT_S, PORT, busybox_pod, probe_pod, ready, start_pods};
use hostwright_e2e::{TestNamespace, client, kubectl_raw};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use tokio::net::TcpStream;

/// What the server answers, so a client proves a full exchange, not a SYN.
const MARKER: &str = "hello-from-the-netpol-server";
/// The label the policy admits.
const ADMITTED: (&str, &str) = ("access", "granted");

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A client pod: it serves on the port too (only so that it is Ready the
/// same way), and the test runs nc in it.
fn client_pod(name: &str, node: &str, admitted: bool) -> Result<Pod> {
    let labels =
        if admitted { labels(&[("role", "client"), ADMITTED]) } else { labels(&[("role", "client")]) };
    probe_pod(name, Some(node), &labels)
}

/// Whether client pod `namespace/name` gets the server's answer over TCP.
fn reaches(namespace: &str, name: &str, server_ip: &str) -> Result<bool> {
    let request = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w {CONNECT_WAIT_S} {server_ip} {PORT}");
    let out = kubectl_raw(&["-n", namespace, "exec", name, "--", "sh", "-c", &request])?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).contains(MARKER))
}

/// One TCP connection from this machine (routed to the server's node, where
/// its first packet meets the policy like any other), within `timeout`.
async fn host_connects(addr: &str, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, TcpStream::connect(addr)).await, Ok(Ok(_)))
}

/// Probe from this machine until a connection's outcome is `want`, every
/// few milliseconds; the time from `since` to the start of the first
/// attempt that had it. A dropped SYN shows as a connect that has not
/// completed in 300 ms (an admitted one takes about a millisecond here).
async fn until_host_connects(addr: &str, want: bool, since: Instant, what: &str) -> Result<Duration> {
    let deadline = since + Duration::from_secs(30);
    loop {
        let started = Instant::now();
        if host_connects(addr, Duration::from_millis(300)).await == want {
            return Ok(started.duration_since(since));
        }
        if Instant::now() > deadline {
            bail!("{what}: not within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_policy_admits_only_labelled_pods_on_the_real_nodes() -> Result<()> {
    let client = client().await?;
    let mut nodes: Vec<String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels("hostwright.io/node=real"))
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    nodes.sort();
    let (Some(here), Some(there)) = (nodes.first().cloned(), nodes.get(1).cloned()) else {
        bail!(
            "this test needs two real nodes (e2e/cluster up with HOSTWRIGHT_REAL_NODES=2); found {nodes:?}"
        );
    };
    let ns = TestNamespace::on_real_nodes(&client, "netpol").await?;
    let other = TestNamespace::on_real_nodes(&client, "netpol-other").await?;

    let server_cmd = format!("echo {MARKER} > /www/index.html && exec httpd -f -p {PORT} -h /www");
    let mut started = start_pods(
        &ns.api(),
        vec![
            busybox_pod("server", Some(&here), &labels(&[("app", "server")]), &server_cmd)?,
            client_pod("admitted-same-node", &here, true)?,
            client_pod("admitted-other-node", &there, true)?,
            client_pod("unlabelled-same-node", &here, false)?,
            client_pod("unlabelled-other-node", &there, false)?,
        ],
    )
    .await?;
    started.extend(
        start_pods(
            &other.api(),
            vec![
                client_pod("labelled-other-ns-same-node", &here, true)?,
                client_pod("labelled-other-ns-other-node", &there, true)?,
            ],
        )
        .await?,
    );
    let server_ip = started
        .iter()
        .find(|(name, _)| name == "server")
        .map(|(_, ip)| ip.clone())
        .context("the server's IP")?;
    let addr = format!("{server_ip}:{PORT}");
    let clients: [(&str, &str, bool); 6] = [
        (&ns.name, "admitted-same-node", true),
        (&ns.name, "admitted-other-node", true),
        (&ns.name, "unlabelled-same-node", false),
        (&ns.name, "unlabelled-other-node", false),
        (&other.name, "labelled-other-ns-same-node", false),
        (&other.name, "labelled-other-ns-other-node", false),
    ];

    // No policy yet: every client, and this machine, reaches the server.
    for (namespace, name, _) in clients {
        ensure!(
            reaches(namespace, name, &server_ip)?,
            "{namespace}/{name} could not reach {addr} with no policy"
        );
    }
    ensure!(host_connects(&addr, Duration::from_secs(3)).await, "this machine could not reach {addr}");
    println!("no policy: all {} clients and this machine reach the server on {here} ({addr})", clients.len());

    // Only pods labelled access=granted in the server's namespace, on the port.
    let policy: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "server-admits-granted"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {ADMITTED.0: ADMITTED.1}}}],
                "ports": [{"protocol": "TCP", "port": PORT}],
            }],
        },
    }))?;
    let policies: Api<NetworkPolicy> = ns.api();
    let created = Instant::now();
    policies.create(&PostParams::default(), &policy).await?;
    let acknowledged = created.elapsed();
    let enforced = until_host_connects(&addr, false, created, "the new policy to be enforced").await?;
    println!(
        "policy enforced by {here} {:.0} ms after it was sent (API write took {:.0} ms)",
        enforced.as_secs_f64() * 1000.0,
        acknowledged.as_secs_f64() * 1000.0
    );
    // It stays enforced: no attempt of this machine's gets through any more.
    for _ in 0..5 {
        ensure!(!host_connects(&addr, Duration::from_millis(500)).await, "this machine reached {addr} again");
    }

    let mut verdicts = Vec::new();
    for (namespace, name, admitted) in clients {
        let got = reaches(namespace, name, &server_ip)?;
        verdicts.push(format!("{namespace}/{name}: {}", if got { "connected" } else { "timed out" }));
        ensure!(
            got == admitted,
            "{namespace}/{name} {} under the policy (admitted: {admitted})",
            if got { "reached the server" } else { "could not reach the server" }
        );
    }
    println!("under the policy:\n  {}", verdicts.join("\n  "));

    // The kubelet's probes (root's own traffic on the node) still pass.
    let server = ns.api::<Pod>().get("server").await?;
    ensure!(ready(&server), "the server is no longer Ready under the policy");

    // Deleting the policy lifts it as quickly.
    let deleted = Instant::now();
    policies.delete("server-admits-granted", &DeleteParams::default()).await?;
    let lifted = until_host_connects(&addr, true, deleted, "the deleted policy to be lifted").await?;
    println!("policy lifted by {here} {:.0} ms after its deletion was sent", lifted.as_secs_f64() * 1000.0);
    ensure!(
        reaches(&ns.name, "unlabelled-same-node", &server_ip)?,
        "an unlabelled pod could not reach the server once the policy was deleted"
    );
    Ok(())
}
