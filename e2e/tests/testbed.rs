//! The test bed makes DatabaseMirror member pods real: a claim of the
//! default class gets a volume, and a scheduled member pod (built by the
//! operator's own builders) gets an agent and a PostgreSQL server on its
//! twin address, with the pod's ServiceAccount identity. No operator runs
//! here: the test writes the instruction annotations itself, and plays crash,
//! power loss, return, pod deletion and claim deletion; and an agent that
//! stops making progress (frozen, or cut off the API server) while its
//! server runs on, which its watchdog must kill.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hostwright::api::{DatabaseMirror, DatabaseMirrorSpec};
use hostwright::contract::timing::{FENCE_AFTER, LEASE};
use hostwright::contract::{Desired, Instruction, Report, ServerRole, decode_report, keys};
use hostwright::resources::databasemirror::{Passwords, agent_credentials, blueprint, children, credentials};
use hostwright_e2e::database::Credentials;
use hostwright_e2e::testbed::{Testbed, ready_endpoints, twin};
use hostwright_e2e::{TestNamespace, client, eventually, wait_deleted, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

const MEMBER: &str = "db-1";
/// initdb and a first start take a few seconds; a debug build on 2 cores more.
const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testbed_provisions_volumes_and_runs_member_pods() -> Result<()> {
    on_testbed("testbed", exercise).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_cut_off_agent_loses_its_server_to_its_watchdog() -> Result<()> {
    on_testbed("chaos", stall_and_cut).await
}

/// Run `body` in a namespace of its own, with a test bed for it.
async fn on_testbed(
    prefix: &str,
    body: impl AsyncFnOnce(&Client, &TestNamespace, &Testbed) -> Result<()>,
) -> Result<()> {
    if !Path::new("/usr/lib/postgresql/15/bin/postgres").exists() {
        bail!("PostgreSQL 15 is not installed (make deps)");
    }
    let client = client().await?;
    let ns = TestNamespace::create(&client, prefix, &[]).await?;
    let root = std::env::temp_dir().join(format!("hostwright-testbed-{}", ns.name));
    let testbed = Testbed::start(client.clone(), Some(ns.name.clone()), root.clone()).await?;
    let result = body(&client, &ns, &testbed).await;
    if result.is_err() {
        eprintln!("--- log of {MEMBER} ---\n{}", testbed.log(MEMBER));
    }
    testbed.stop().await?;
    let _ = std::fs::remove_dir_all(&root);
    result
}

async fn exercise(client: &Client, ns: &TestNamespace, testbed: &Testbed) -> Result<()> {
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("{:>6.1}s {what}", started.elapsed().as_secs_f64());
    let (read_write, credentials_secret) = create_member(ns).await?;

    // The claim gets a volume of the default class, in a directory of its own.
    let claims: Api<PersistentVolumeClaim> = ns.api();
    let claim = wait_for(
        &claims,
        MEMBER,
        Duration::from_secs(60),
        "PVC Bound",
        |c: Option<&PersistentVolumeClaim>| {
            c.and_then(|c| c.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some("Bound")
        },
    )
    .await?;
    step("the claim is bound");
    let volume_name = claim.spec.and_then(|s| s.volume_name).context("bound claim without volume")?;
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let volume = volumes.get(&volume_name).await?;
    let spec = volume.spec.context("volume without spec")?;
    assert_eq!(spec.storage_class_name.as_deref(), Some("hostwright-local"));
    let dir = spec.host_path.context("a hostPath volume")?.path;
    assert!(dir.starts_with(&testbed.root().join("volumes").to_string_lossy().into_owned()), "{dir}");

    // The pod's agent bootstraps a primary and reports it on the member Lease.
    let leases: Api<Lease> = ns.api();
    wait_report(&leases, "primary", |r| r.role == ServerRole::Primary).await?;
    step("the member reports primary");
    let pods: Api<Pod> = ns.api();
    let pod = pods.get(MEMBER).await?;
    // Like the downward API: the agent acts on this pod only.
    let agent = testbed.agent_pid(MEMBER).context("a running agent")?;
    let environ = std::fs::read(format!("/proc/{agent}/environ")).context("the agent's environment")?;
    let told = format!("{}={}", keys::POD_UID_ENV, pod.metadata.uid.as_deref().context("pod without uid")?);
    assert!(environ.split(|b| *b == 0).any(|v| v == told.as_bytes()), "the agent is told {told}");
    let pod_ip = pod.status.and_then(|s| s.pod_ip).context("pod without address")?;
    let address = twin(&pod_ip).context("a 10.244.0.0/16 pod address")?;
    let conninfo = conninfo(&address, &credentials_secret)?;
    sql(&conninfo, "CREATE TABLE orders (id int)").await?;
    sql(&conninfo, "INSERT INTO orders SELECT generate_series(1, 25)").await?;

    step("rows written through the twin address");

    // Clients find the server through the Service the operator routes by
    // role label: its ready endpoint is the same twin address.
    create(ns.api::<Service>(), read_write.clone()).await?;
    let label = json!({"metadata": {"labels": {"hostwright.io/role": "primary"}}});
    pods.patch(MEMBER, &PatchParams::default(), &Patch::Merge(label)).await?;
    let rw = read_write.metadata.name.clone().context("Service without name")?;
    eventually(Duration::from_secs(60), "the primary behind the rw Service", || async {
        Ok((ready_endpoints(client, &ns.name, &rw).await? == [address.clone()]).then_some(()))
    })
    .await?;
    step("the rw Service's endpoint is the twin address");

    // A crashed server: the agent lives on and reports it stopped.
    testbed.kill_server(MEMBER).await?;
    wait_report(&leases, "stopped", |r| r.role == ServerRole::Stopped).await?;
    step("the killed server is reported stopped");

    // Power loss: nobody renews the Lease any more.
    testbed.kill_member(MEMBER).await?;
    eventually(TIMEOUT, "the member Lease to go unrenewed", || async {
        let lease = leases.get(MEMBER).await?;
        let renewed = lease.spec.and_then(|s| s.renew_time).map_or(0, |t| t.0.as_millisecond());
        Ok((now() as i64 - renewed > LEASE.as_millis() as i64).then_some(()))
    })
    .await?;
    assert!(testbed.agent_pid(MEMBER).is_none(), "a member taken down stays down");
    step("the killed member's Lease expired");

    // Back: a new agent keeps the server down (the engine may be replacing
    // it meanwhile) until the engine has fenced it and told it to serve
    // again; then it starts on the same volume, data intact.
    testbed.revive(MEMBER)?;
    wait_report(&leases, "stopped, waiting to be fenced", |r| r.role == ServerRole::Stopped && r.epoch == 1)
        .await?;
    for (desired, epoch) in [(Desired::Primary, 2), (Desired::Fenced, 3)] {
        instruct(&pods, Instruction::new(desired, epoch)).await?;
        wait_report(&leases, "the instruction read", |r| r.epoch == epoch && r.role == ServerRole::Stopped)
            .await?;
    }
    instruct(&pods, Instruction::new(Desired::Primary, 4)).await?;
    wait_report(&leases, "primary again", |r| r.role == ServerRole::Primary && r.epoch == 4).await?;
    let rows = sql(&conninfo, "SELECT count(*) FROM orders").await?;
    assert_eq!(rows[0].get::<_, i64>(0), 25, "the volume kept every row");
    step("the revived member reports primary, every row kept");

    // Deleting the pod stops its agent, which stops its server: nothing is left.
    let agent = testbed.agent_pid(MEMBER).context("a running agent")?;
    let server = testbed.server_pid(MEMBER).context("a running server")?;
    pods.delete(MEMBER, &DeleteParams::default()).await?;
    eventually(Duration::from_secs(60), "the agent and its server to end", || async {
        Ok((testbed.agent_pid(MEMBER).is_none() && !alive(agent) && !alive(server)).then_some(()))
    })
    .await?;
    step("the deleted pod's agent and server are gone");

    // Deleting the claim releases the volume; its directory goes with it.
    claims.delete(MEMBER, &DeleteParams::default()).await?;
    wait_deleted(&volumes, &volume_name, Duration::from_secs(60), "the released volume").await?;
    assert!(!Path::new(&dir).exists(), "{dir} is removed with its volume");
    step("the released volume and its directory are gone");
    Ok(())
}

/// The watchdog's promise: an agent that stops making progress while its
/// server runs on, frozen or cut off the API server, has its server killed
/// within `FENCE_AFTER` of its last renewal, and so before anyone could
/// take its Lease over. A frozen agent stays frozen meanwhile; a cut-off
/// one renews again once the API server is back.
async fn stall_and_cut(_client: &Client, ns: &TestNamespace, testbed: &Testbed) -> Result<()> {
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("{:>6.1}s {what}", started.elapsed().as_secs_f64());
    let (_, credentials_secret) = create_member(ns).await?;
    let leases: Api<Lease> = ns.api();
    let pods: Api<Pod> = ns.api();
    wait_report(&leases, "primary", |r| r.role == ServerRole::Primary).await?;
    step("the member reports primary");
    let pod_ip = pods.get(MEMBER).await?.status.and_then(|s| s.pod_ip).context("pod without address")?;
    let conninfo = conninfo(&twin(&pod_ip).context("a 10.244.0.0/16 pod address")?, &credentials_secret)?;

    // A frozen agent: its watchdog kills the server it can no longer fence.
    let agent = testbed.agent_pid(MEMBER).context("a running agent")?;
    let server = testbed.server_pid(MEMBER).context("a running server")?;
    let session = connect(&conninfo).await?;
    testbed.stall_agent(MEMBER).await?;
    let stalled = std::time::Instant::now();
    step("the agent is stalled");
    session.simple_query("SELECT 1").await.context("a query while the agent is stalled")?;
    let died = watchdog_kills(testbed, &leases, server, stalled, "stall").await?;
    step(&format!("the stalled agent's server died {:.2}s after the stall", died.as_secs_f64()));
    assert!(session.simple_query("SELECT 1").await.is_err(), "the client's connection died with the server");
    assert_eq!(process_state(agent), Some('T'), "the agent stays stopped");
    assert_eq!(testbed.agent_pid(MEMBER), Some(agent), "a stalled agent is neither reaped nor restarted");

    // Resumed, it finds its server gone and reports it; once fenced and
    // told again, it brings the primary back.
    testbed.resume_agent(MEMBER).await?;
    wait_report(&leases, "stopped after the stall", |r| r.role == ServerRole::Stopped).await?;
    step("the resumed agent reports its server stopped");
    instruct(&pods, Instruction::new(Desired::Fenced, 2)).await?;
    wait_report(&leases, "fenced at epoch 2", |r| r.role == ServerRole::Stopped && r.epoch == 2).await?;
    instruct(&pods, Instruction::new(Desired::Primary, 3)).await?;
    wait_report(&leases, "primary at epoch 3", |r| r.role == ServerRole::Primary && r.epoch == 3).await?;
    step("fenced, then told again, it brings the primary back");

    // Cut off the API server: the same, with the agent running.
    let server = testbed.server_pid(MEMBER).context("a running server")?;
    let session = connect(&conninfo).await?;
    testbed.cut_api(MEMBER)?;
    let cut = std::time::Instant::now();
    step("the agent is cut off the API server");
    session.simple_query("SELECT 1").await.context("a query while the agent is cut off")?;
    let died = watchdog_kills(testbed, &leases, server, cut, "cut").await?;
    step(&format!("the cut-off agent's server died {:.2}s after the cut", died.as_secs_f64()));
    assert!(session.simple_query("SELECT 1").await.is_err(), "the client's connection died with the server");
    assert!(process_state(agent).is_some_and(|s| s != 'T' && s != 'Z'), "the agent runs on");
    assert_eq!(testbed.agent_pid(MEMBER), Some(agent), "the agent was not restarted");

    // Back in touch, it renews its Lease again, reporting the server stopped.
    let last = renewed(&leases).await?;
    testbed.restore_api(MEMBER)?;
    let restored = std::time::Instant::now();
    eventually(Duration::from_secs(30), "a renewal after the restore", || async {
        Ok((renewed(&leases).await? > last).then_some(()))
    })
    .await?;
    step(&format!("the agent renewed {:.2}s after the restore", restored.elapsed().as_secs_f64()));
    wait_report(&leases, "stopped after the cut", |r| r.role == ServerRole::Stopped && r.epoch == 3).await?;
    step("the agent reports its server stopped");
    Ok(())
}

/// Wait for the watchdog to kill `server` after a fault at `since`, and
/// check it kept its promise: dead within `FENCE_AFTER` of the last renewal
/// (the agent's clock is this machine's), and no renewal since. Returns how
/// long after the fault the server was seen dead.
async fn watchdog_kills(
    testbed: &Testbed,
    leases: &Api<Lease>,
    server: u32,
    since: std::time::Instant,
    fault: &str,
) -> Result<Duration> {
    // One poll of `eventually` and the watchdog's own, with room to spare.
    let slack = Duration::from_millis(1_000);
    eventually(
        FENCE_AFTER + slack * 5,
        &format!("the watchdog to kill the server after the {fault}"),
        || async { Ok((!alive(server)).then_some(())) },
    )
    .await?;
    let dead_at = Timestamp::now();
    let after_fault = since.elapsed();
    let last = renewed(leases).await?;
    let unrenewed = Duration::try_from(dead_at.duration_since(last))?;
    eprintln!(
        "       {fault}: server {server} seen dead {:.2}s after the fault, {:.2}s after the last renewal",
        after_fault.as_secs_f64(),
        unrenewed.as_secs_f64()
    );
    assert!(unrenewed <= FENCE_AFTER + slack, "the server outlived its last renewal by {unrenewed:?}");
    assert!(after_fault <= FENCE_AFTER + slack, "the server outlived the {fault} by {after_fault:?}");
    assert!(testbed.server_pid(MEMBER).is_none(), "no server runs on the member's data");
    Ok(after_fault)
}

/// When the member's Lease was last renewed (by its agent's clock).
async fn renewed(leases: &Api<Lease>) -> Result<Timestamp> {
    let lease = leases.get(MEMBER).await?;
    Ok(lease.spec.and_then(|s| s.renew_time).context("a Lease without renewTime")?.0)
}

/// Write the member's instruction, as the operator would.
async fn instruct(pods: &Api<Pod>, instruction: Instruction) -> Result<()> {
    let patch = json!({"metadata": {"annotations": {keys::INSTRUCTION_ANNOTATION: instruction.encode()}}});
    pods.patch(MEMBER, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

/// A client session that stays open, as an application's would.
async fn connect(member: &Reach) -> Result<tokio_postgres::Client> {
    member.credentials.connect(&member.address).await.context("connecting to the member")
}

/// A member pod and what it needs, as the DatabaseMirror controller would
/// create them (from its own builders), told to initialise a primary; its
/// read-write Service (not created) and its credentials.
/// The DatabaseMirror exists in memory only; its made-up uid would dangle
/// in owner references, so they are dropped.
async fn create_member(ns: &TestNamespace) -> Result<(Service, Secret)> {
    let spec: DatabaseMirrorSpec = serde_yaml::from_str("instance: {storage: {size: 1Gi}}")?;
    let mut dbm = DatabaseMirror::new("db", spec);
    dbm.metadata.namespace = Some(ns.name.clone());
    dbm.metadata.uid = Some("00000000-0000-4000-8000-000000000001".into());
    let salt: u32 = rand::random();
    let passwords = Passwords {
        owner: format!("owner-{salt:08x}"),
        replication: format!("repl-{salt:08x}"),
        superuser: format!("su-{salt:08x}"),
    };
    let blueprint = blueprint(&dbm)?;
    let children = children(&dbm, &blueprint);
    // The store's CA and certificate, as the controller issues them.
    let now = std::time::SystemTime::now();
    let ca = hostwright::tls::new_authority(&blueprint.ca_common_name(), now)?;
    let issued =
        hostwright::tls::issue_server(&ca, &blueprint.dns_names(), now, hostwright::tls::SERVER_LIFETIME)?;
    let credentials_secret = credentials(&dbm, &blueprint, &passwords.owner, &ca.cert_pem);
    create(ns.api::<ConfigMap>(), children.config).await?;
    create(ns.api::<Secret>(), credentials_secret.clone()).await?;
    create(ns.api::<Secret>(), agent_credentials(&dbm, &blueprint, &passwords)).await?;
    create(ns.api::<Secret>(), blueprint.tls_secret(&issued, &ca.cert_pem)).await?;
    create_agent_identity(ns).await?;
    let volume = blueprint.member_volume(MEMBER).context("a DatabaseMirror always has storage")?;
    create(ns.api::<PersistentVolumeClaim>(), volume).await?;
    let mut pod = blueprint.member_pod(MEMBER, "hostwright:e2e");
    let annotations = pod.metadata.annotations.get_or_insert_default();
    let first = Instruction { initialize: true, ..Instruction::new(Desired::Primary, 1) };
    annotations.insert(keys::INSTRUCTION_ANNOTATION.into(), first.encode());
    create(ns.api::<Pod>(), pod).await?;
    Ok((children.read_write, credentials_secret))
}

/// How to reach the member's database at `address` as its owner (over TLS,
/// as the application would).
struct Reach {
    credentials: Credentials,
    address: String,
}

fn conninfo(address: &str, credentials: &Secret) -> Result<Reach> {
    Ok(Reach { credentials: Credentials::from_secret(credentials)?, address: address.to_string() })
}

/// The agent's own identity: what it reads and writes, nothing more.
async fn create_agent_identity(ns: &TestNamespace) -> Result<()> {
    create(ns.api::<ServiceAccount>(), from_json(json!({"metadata": {"name": "db-agent"}}))?).await?;
    let role: Role = from_json(json!({
        "metadata": {"name": "db-agent"},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch", "update"]},
        ],
    }))?;
    create(ns.api::<Role>(), role).await?;
    let binding: RoleBinding = from_json(json!({
        "metadata": {"name": "db-agent"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "db-agent"},
        "subjects": [{"kind": "ServiceAccount", "name": "db-agent", "namespace": ns.name}],
    }))?;
    create(ns.api::<RoleBinding>(), binding).await
}

fn from_json<K: DeserializeOwned>(value: serde_json::Value) -> Result<K> {
    Ok(serde_json::from_value(value)?)
}

/// Create `object` as built, without owner references (see `exercise`).
async fn create<K>(api: Api<K>, mut object: K) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    object.meta_mut().owner_references = None;
    object.meta_mut().namespace = None;
    let name = object.meta().name.clone().unwrap_or_default();
    api.create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating {} {name}", K::kind(&())))?;
    Ok(())
}

fn now() -> u64 {
    k8s_openapi::jiff::Timestamp::now().as_millisecond().max(0) as u64
}

/// Wait until the member's Lease carries a live report that `ok` accepts.
async fn wait_report(leases: &Api<Lease>, what: &str, ok: impl Fn(&Report) -> bool) -> Result<Report> {
    eventually(TIMEOUT, &format!("{MEMBER} to report {what}"), || async {
        let Some(lease) = leases.get_opt(MEMBER).await? else { return Ok(None) };
        let reported = lease.metadata.annotations.as_ref().and_then(decode_report);
        Ok(reported.map(|(r, _)| r).filter(|r| ok(r)))
    })
    .await
}

async fn sql(member: &Reach, statement: &str) -> Result<Vec<tokio_postgres::Row>> {
    let client = connect(member).await?;
    client.query(statement, &[]).await.with_context(|| format!("running {statement}"))
}

/// The process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    process_state(pid).is_some_and(|state| state != 'Z')
}

/// The state letter in /proc/<pid>/stat (T: stopped); `None`: no such process.
fn process_state(pid: u32) -> Option<char> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
}
