//! Proof that the real nodes of the local cluster (e2e/lib/nodes.sh) are a
//! real data path: kubelet runs a `restricted` pod in a runc container with
//! real probes and a preStop hook, the API server reaches the kubelet (logs,
//! exec), a Service answers through kube-proxy's rules from pods on both
//! nodes, in two zones, and its name resolves through the cluster DNS; the
//! nginx image serves unprivileged.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hostwright_e2e::{TestNamespace, client, eventually, http_get, kubectl, kubectl_raw, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

const REAL: &str = "hostwright.io/node=real";
const IMAGE: &str = "hostwright.local/busybox:1";
const NGINX_IMAGE: &str = "hostwright.local/nginx:1.22";

fn web_deployment() -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "hello"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "hello"}},
            "template": {
                "metadata": {"labels": {"app": "hello"}},
                "spec": {
                    "nodeSelector": {"hostwright.io/node": "real"},
                    "tolerations": [{"key": "hostwright.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "nodeTaintsPolicy": "Honor",
                        "labelSelector": {"matchLabels": {"app": "hello"}},
                    }],
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": 10001, "runAsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "terminationGracePeriodSeconds": 10,
                    "containers": [{
                        "name": "web",
                        "image": IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c",
                            "echo \"hello from $(hostname)\" > /www/index.html && exec httpd -f -p 8080 -h /www"],
                        "ports": [{"containerPort": 8080, "name": "http"}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                        "livenessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 5},
                        "lifecycle": {"preStop": {"sleep": {"seconds": 2}}},
                        "volumeMounts": [{"name": "www", "mountPath": "/www"}],
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                    "volumes": [{"name": "www", "emptyDir": {}}],
                },
            },
        },
    }))?)
}

#[tokio::test]
async fn a_restricted_pod_runs_on_each_real_node_and_its_service_answers_through_kube_proxy() -> Result<()> {
    let client = client().await?;
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default().labels(REAL)).await?.items;
    if nodes.len() < 2 {
        bail!(
            "this test needs two real nodes (e2e/cluster up with HOSTWRIGHT_REAL_NODES=2); found {}",
            nodes.len()
        );
    }
    let zones: BTreeSet<String> =
        nodes.iter().filter_map(|n| n.labels().get("topology.kubernetes.io/zone").cloned()).collect();
    ensure!(zones.len() >= 2, "real nodes in two zones, found {zones:?}");

    let ns = TestNamespace::create(&client, "nodes", &[("pod-security.kubernetes.io/enforce", "restricted")])
        .await?;
    let deployments: Api<Deployment> = ns.api();
    deployments.create(&PostParams::default(), &web_deployment()?).await?;
    let services: Api<Service> = ns.api();
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "hello"},
        "spec": {"selector": {"app": "hello"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }))?;
    let service = services.create(&PostParams::default(), &service).await?;
    wait_for(
        &deployments,
        "hello",
        Duration::from_secs(120),
        "2 pods Ready by their probes",
        |d: Option<&Deployment>| {
            d.and_then(|d| d.status.as_ref()).is_some_and(|s| s.ready_replicas == Some(2))
        },
    )
    .await?;

    let pods: Api<Pod> = ns.api();
    let running = pods.list(&ListParams::default().labels("app=hello")).await?.items;
    let hosts: BTreeSet<String> =
        running.iter().filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone())).collect();
    ensure!(hosts.len() == 2, "one pod on each real node, got {hosts:?}");

    // The API server reaches each kubelet: logs and exec.
    for pod in &running {
        let name = pod.metadata.name.as_deref().context("a pod name")?;
        let page = kubectl(&["-n", &ns.name, "exec", name, "--", "cat", "/www/index.html"])?;
        ensure!(page.contains(&format!("hello from {name}")), "exec in {name} read {page:?}");
        kubectl(&["-n", &ns.name, "logs", name])?;
    }
    // A pod reaches the API server through the `kubernetes` Service, as an
    // in-cluster client (the operator) does.
    let first = running.first().and_then(|p| p.metadata.name.as_deref()).context("a pod")?;
    // A TCP connection (busybox's nc; its static wget crashes without NSS
    // files), beside a port of that address no Service has, which must fail.
    // Its address follows the cluster's Service range (HOSTWRIGHT_POD_NET).
    let kubernetes: Api<Service> = Api::namespaced(client.clone(), "default");
    let api_vip = kubernetes
        .get("kubernetes")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the kubernetes Service's ClusterIP")?;
    let connect = |port: &str| {
        kubectl_raw(&["-n", &ns.name, "exec", first, "--", "nc", "-w", "3", &api_vip, port])
            .map(|out| out.status.success())
    };
    ensure!(connect("443")?, "a pod could not connect to the kubernetes Service at {api_vip}:443");
    ensure!(!connect("444")?, "a pod connected to {api_vip}:444, where no Service listens");
    // The cluster DNS: a Service's name resolves to its virtual IP from a pod;
    // a name outside the cluster does not resolve at all.
    let lookup = |name: &str| kubectl_raw(&["-n", &ns.name, "exec", first, "--", "nslookup", name]);
    let found = lookup(&format!("hello.{}.svc.cluster.local", ns.name))?;
    let vip = service.spec.as_ref().and_then(|s| s.cluster_ip.clone()).context("a ClusterIP")?;
    ensure!(
        found.status.success() && String::from_utf8_lossy(&found.stdout).contains(&vip),
        "hello's name did not resolve to {vip}: {}",
        String::from_utf8_lossy(&found.stdout)
    );
    ensure!(!lookup("example.com")?.status.success(), "a name outside the cluster resolved");

    // The Service's VIP, from this machine, through kube-proxy's rules: both
    // pods answer.
    let vip = service.spec.and_then(|s| s.cluster_ip).context("a ClusterIP")?;
    let addr = format!("{vip}:80");
    let answered = eventually(Duration::from_secs(60), "both pods answering through the Service", || {
        let addr = addr.clone();
        async move {
            let mut seen = BTreeSet::new();
            for _ in 0..40 {
                let (status, body) = http_get(&addr, "/").await?;
                ensure!(status == 200, "status {status} from {addr}");
                seen.insert(body.trim().to_string());
            }
            Ok((seen.len() == 2).then_some(seen))
        }
    })
    .await?;
    println!("answers through {addr}: {answered:?}");
    a_deleted_pod_runs_its_pre_stop_hook(&pods).await
}

/// The nginx image (laid out as nginxinc/nginx-unprivileged) serves under
/// the `restricted` profile with a read-only root filesystem, as a
/// WebCluster's pods run it: uid 101, port 8080, temporary files in /tmp.
#[tokio::test]
async fn the_nginx_image_serves_unprivileged_with_a_read_only_root() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "nginx", &[("pod-security.kubernetes.io/enforce", "restricted")])
        .await?;
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "nginx", "labels": {"app": "nginx"}},
        "spec": {
            "nodeSelector": {"hostwright.io/node": "real"},
            "tolerations": [{"key": "hostwright.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "nginx",
                "image": NGINX_IMAGE,
                "imagePullPolicy": "Never",
                "ports": [{"containerPort": 8080, "name": "http"}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }))?;
    let pods: Api<Pod> = ns.api();
    pods.create(&PostParams::default(), &pod).await?;
    let ready = wait_for(&pods, "nginx", Duration::from_secs(120), "nginx Ready", |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| cs.iter().all(|c| c.ready))
    })
    .await?;
    let ip = ready.status.and_then(|s| s.pod_ip).context("a pod IP")?;
    let (status, body) = http_get(&format!("{ip}:8080"), "/").await?;
    ensure!(status == 200 && body.contains("Welcome to nginx"), "nginx answered {status}: {body:?}");
    Ok(())
}

/// The namespace's pods end through their preStop hook within the grace
/// period: kubelet really stops containers.
async fn a_deleted_pod_runs_its_pre_stop_hook(pods: &Api<Pod>) -> Result<()> {
    let list = pods.list(&ListParams::default().labels("app=hello")).await?.items;
    let name = list.first().and_then(|p| p.metadata.name.clone()).context("a pod")?;
    let started = std::time::Instant::now();
    pods.delete(&name, &Default::default()).await?;
    eventually(Duration::from_secs(30), "the deleted pod to be gone", || {
        let pods = pods.clone();
        let name = name.clone();
        async move { Ok(pods.get_opt(&name).await?.is_none().then_some(())) }
    })
    .await?;
    let took = started.elapsed();
    ensure!(took >= Duration::from_secs(2), "the preStop sleep of 2 s ran (gone after {took:?})");
    Ok(())
}
