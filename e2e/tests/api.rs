//! The Hostwright API on a real API server: CRDs install and become
//! Established, kubectl shows printer columns and docs, and bad objects are
//! rejected by the schema or a CEL rule with the message a user needs.

use anyhow::{Context, Result, ensure};
use hostwright::api::{DatabaseMirror, SessionStore, WebCluster, databasemirror, sessionstore, webcluster};
use std::time::Duration;

use hostwright_e2e::{TestNamespace, client, ensure_crds, eventually, kubectl, kubectl_raw};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::discovery::ApiResource;
use serde_json::{Value, json};

#[tokio::test]
async fn crds_are_established_with_names_and_subresources() -> Result<()> {
    let client = client().await?;
    let crds = ensure_crds(&client).await?;
    let names: Vec<_> = crds.iter().map(|c| c.spec.names.plural.clone()).collect();
    assert_eq!(names, ["webclusters", "sessionstores", "databasemirrors"]);

    let wc = &crds[0];
    assert_eq!(wc.spec.names.short_names.as_deref(), Some(&["wc".to_string()][..]));
    let version = &wc.spec.versions[0];
    let sub = version.subresources.as_ref().context("WebCluster subresources")?;
    assert!(sub.status.is_some(), "WebCluster has the status subresource");
    let scale = sub.scale.as_ref().context("WebCluster scale subresource")?;
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.label_selector_path.as_deref(), Some(".status.selector"));
    assert_eq!(crds[1].spec.names.short_names.as_deref(), Some(&["sst".to_string()][..]));
    assert_eq!(crds[2].spec.names.short_names.as_deref(), Some(&["dbm".to_string()][..]));
    Ok(())
}

#[tokio::test]
async fn kubectl_get_shows_printer_columns_for_every_kind() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "columns", &[]).await?;
    let pp = PostParams::default();
    ns.api::<WebCluster>()
        .create(&pp, &serde_json::from_value(web("site", json!({"image": "nginx:1.27"})))?)
        .await?;
    ns.api::<SessionStore>().create(&pp, &serde_json::from_value(store("sessions", json!({})))?).await?;
    ns.api::<DatabaseMirror>().create(&pp, &serde_json::from_value(db("db", json!({})))?).await?;

    let expectations = [
        ("webclusters", vec!["NAME", "REPLICAS", "READY", "UP-TO-DATE", "IMAGE", "PHASE", "AGE"], "site"),
        ("wc", vec!["NAME", "REPLICAS", "READY", "UP-TO-DATE", "IMAGE", "PHASE", "AGE"], "nginx:1.27"),
        ("sessionstores", vec!["NAME", "ENGINE", "PRIMARY", "READY", "PHASE", "AGE"], "redis"),
        (
            "databasemirrors",
            vec!["NAME", "PRIMARY", "MIRRORS", "READY", "LAG", "PHASE", "LAST-FAILOVER", "AGE"],
            "db",
        ),
    ];
    for (resource, columns, cell) in expectations {
        let out = kubectl(&["get", resource, "-n", &ns.name])?;
        let header: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header, columns, "columns of `kubectl get {resource}`:\n{out}");
        assert!(out.contains(cell), "`kubectl get {resource}` shows {cell}:\n{out}");
    }
    // The wide view adds the tier; the defaulted spec shows in the columns.
    let wide = kubectl(&["get", "wc", "site", "-n", &ns.name, "-o", "wide"])?;
    assert!(wide.contains("TIER") && wide.contains("production"), "{wide}");
    let row = kubectl(&["get", "wc", "site", "-n", &ns.name, "--no-headers"])?;
    assert_eq!(row.split_whitespace().nth(1), Some("3"), "replicas default to 3: {row}");
    Ok(())
}

#[tokio::test]
async fn kubectl_explain_shows_the_field_docs() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    // The API server publishes a new CRD's OpenAPI a moment after it is Established.
    let spec = eventually(Duration::from_secs(60), "the WebCluster OpenAPI to be published", || async {
        Ok(kubectl(&["explain", "webcluster.spec"]).ok())
    })
    .await?;
    for needle in
        ["GROUP:      hostwright.io", "tolerate", "Node failures the cluster must survive", "sessionStoreRef"]
    {
        assert!(spec.contains(needle), "`kubectl explain webcluster.spec` mentions {needle:?}:\n{spec}");
    }
    let failover = kubectl(&["explain", "databasemirror.spec.failover.maxLagBytes"])?;
    assert!(failover.contains("never promoted automatically"), "{failover}");
    let sst = kubectl(&["explain", "sessionstore.spec.durability"])?;
    assert!(sst.contains("WAIT"), "{sst}");
    Ok(())
}

/// One invalid object, the kind it is, and what the API server must say.
struct Invalid {
    case: &'static str,
    object: Value,
    message: &'static str,
}

fn invalid_objects() -> Vec<Invalid> {
    let nginx = || json!({"image": "nginx:1.27"});
    let with = |base: Value, patch: Value| merge(base, patch);
    vec![
        Invalid {
            case: "web: replicas below 1",
            object: web("w", with(nginx(), json!({"replicas": 0}))),
            message: "spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1",
        },
        Invalid {
            case: "web: image missing",
            object: web("w", json!({"replicas": 2})),
            message: "spec.image: Required value",
        },
        Invalid {
            case: "web: image with a space",
            object: web("w", json!({"image": "nginx 1.27"})),
            message: "image must not contain spaces",
        },
        Invalid {
            case: "web: tolerate = replicas",
            object: web("w", with(nginx(), json!({"replicas": 3, "tolerate": 3}))),
            message: "tolerate must be less than replicas: at least one web server has to survive",
        },
        Invalid {
            case: "web: autoscaling min > max",
            object: web("w", with(nginx(), json!({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}))),
            message: "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        },
        Invalid {
            case: "web: tolerate = autoscaling min",
            object: web(
                "w",
                with(nginx(), json!({"tolerate": 2, "autoscaling": {"minReplicas": 2, "maxReplicas": 6}})),
            ),
            message: "tolerate must be less than autoscaling.minReplicas",
        },
        Invalid {
            case: "web: port out of range",
            object: web("w", with(nginx(), json!({"port": 70000}))),
            message: "spec.port in body should be less than or equal to 65535",
        },
        Invalid {
            case: "web: unknown tier",
            object: web("w", with(nginx(), json!({"tier": "canary"}))),
            message: "spec.tier: Unsupported value: \"canary\"",
        },
        Invalid {
            case: "web: host name with spaces",
            object: web("w", with(nginx(), json!({"hosts": ["Not A Host"]}))),
            message: "spec.hosts[0] in body should match",
        },
        Invalid {
            case: "web: duplicate hosts",
            object: web("w", with(nginx(), json!({"hosts": ["a.example.com", "a.example.com"]}))),
            message: "spec.hosts[1]: Duplicate value: \"a.example.com\"",
        },
        Invalid {
            case: "web: probe path not absolute",
            object: web("w", with(nginx(), json!({"probes": {"readiness": {"path": "healthz"}}}))),
            message: "spec.probes.readiness.path in body should match '^/'",
        },
        Invalid {
            case: "web: bad reference name",
            object: web("w", with(nginx(), json!({"sessionStoreRef": {"name": "Bad_Name"}}))),
            message: "spec.sessionStoreRef.name in body should match",
        },
        Invalid {
            case: "web: tls (an issuer) without hosts",
            object: web("w", with(nginx(), json!({"tls": {"clusterIssuer": "letsencrypt"}}))),
            message: "tls needs hosts: the certificate is for the host names in hosts",
        },
        Invalid {
            case: "web: both issuer kinds",
            object: web(
                "w",
                with(
                    nginx(),
                    json!({"hosts": ["a.example.com"], "tls": {"clusterIssuer": "a", "issuer": "b"}}),
                ),
            ),
            message: "tls: set clusterIssuer or issuer, not both",
        },
        Invalid {
            case: "web: ingress class without hosts",
            object: web("w", with(nginx(), json!({"ingress": {"className": "nginx"}}))),
            message: "ingress needs hosts",
        },
        Invalid {
            case: "web: gateway without hosts",
            object: web("w", with(nginx(), json!({"gateway": {"parentRefs": [{"name": "public"}]}}))),
            message: "gateway needs hosts",
        },
        Invalid {
            case: "web: ingress and gateway",
            object: web(
                "w",
                with(
                    nginx(),
                    json!({"hosts": ["a.example.com"], "ingress": {"className": "nginx"},
                           "gateway": {"parentRefs": [{"name": "public"}]}}),
                ),
            ),
            message: "set ingress or gateway, not both",
        },
        Invalid {
            case: "web: tls with gateway",
            object: web(
                "w",
                with(
                    nginx(),
                    json!({"hosts": ["a.example.com"], "tls": {},
                           "gateway": {"parentRefs": [{"name": "public"}]}}),
                ),
            ),
            message: "tls applies to the Ingress",
        },
        Invalid {
            case: "web: gateway with 17 hosts",
            object: web(
                "w",
                with(
                    nginx(),
                    json!({"hosts": (0..17).map(|i| format!("h{i}.example.com")).collect::<Vec<_>>(),
                           "gateway": {"parentRefs": [{"name": "public"}]}}),
                ),
            ),
            message: "with gateway, hosts takes at most 16 names",
        },
        Invalid {
            case: "web: gateway without parents",
            object: web(
                "w",
                with(nginx(), json!({"hosts": ["a.example.com"], "gateway": {"parentRefs": []}})),
            ),
            message: "spec.gateway.parentRefs in body should have at least 1 items",
        },
        Invalid {
            case: "web: network policy peer with no selector",
            object: web("w", with(nginx(), json!({"networkPolicy": {"allowFrom": [{}]}}))),
            message: "every allowFrom entry needs podSelector, namespaceSelector or ipBlock",
        },
        Invalid {
            case: "web: network policy admitting nobody",
            object: web("w", with(nginx(), json!({"networkPolicy": {"allowFrom": []}}))),
            message: "spec.networkPolicy.allowFrom in body should have at least 1 items",
        },
        Invalid {
            case: "web: tls secret name not a name",
            object: web(
                "w",
                with(nginx(), json!({"hosts": ["a.example.com"], "tls": {"secretName": "Bad Name"}})),
            ),
            message: "spec.tls.secretName in body should match",
        },
        Invalid {
            case: "sessions: unknown engine",
            object: store("s", json!({"engine": "memcached"})),
            message: "spec.engine: Unsupported value: \"memcached\"",
        },
        Invalid {
            case: "sessions: external with storage",
            object: store(
                "s",
                json!({"external": {"secretRef": {"name": "redis-at-provider"}}, "storage": {"size": "1Gi"}}),
            ),
            message: "storage cannot be set for an external session store",
        },
        Invalid {
            case: "sessions: external with tls",
            object: store(
                "s",
                json!({"external": {"secretRef": {"name": "redis-at-provider"}}, "tls": {"issuerRef": {"name": "ca"}}}),
            ),
            message: "tls cannot be set for an external session store",
        },
        Invalid {
            case: "sessions: an issuer kind that is not a kind",
            object: store("s", json!({"tls": {"issuerRef": {"name": "ca", "kind": "issuer"}}})),
            message: "spec.tls.issuerRef.kind",
        },
        Invalid {
            case: "sessions: failover delay not a duration",
            object: store("s", json!({"failover": {"delay": "soon"}})),
            message: "spec.failover.delay in body should match",
        },
        Invalid {
            case: "sessions: failover delay too large for any duration",
            object: store("s", json!({"failover": {"delay": "99999999999999999999h"}})),
            message: "failover.delay must be between 0s and 1h",
        },
        Invalid {
            case: "sessions: failover delay longer than the 1h bound",
            object: store("s", json!({"failover": {"delay": "1h0m0.001s"}})),
            message: "failover.delay must be between 0s and 1h",
        },
        Invalid {
            case: "web: name not a DNS-1035 label (a digit first)",
            object: web("1shop", nginx()),
            message: "metadata.name must be a DNS-1035 label",
        },
        Invalid {
            case: "web: name one character too long",
            object: web(&too_long(webcluster::MAX_NAME_LENGTH), nginx()),
            message: "of at most 63 characters, so that every object a WebCluster creates",
        },
        Invalid {
            case: "sessions: name one character too long",
            object: store(&too_long(sessionstore::MAX_NAME_LENGTH), json!({})),
            message: "of at most 52 characters, so that every object a SessionStore creates",
        },
        Invalid {
            case: "db: name one character too long",
            object: db(&too_long(databasemirror::MAX_NAME_LENGTH), json!({})),
            message: "of at most 51 characters, so that every object a DatabaseMirror creates",
        },
        Invalid {
            case: "db: failover delay longer than the 1h bound",
            object: db("d", json!({"failover": {"delay": "61m"}})),
            message: "failover.delay must be between 0s and 1h",
        },
        Invalid {
            case: "db: backup to an endpoint that is not http(s)",
            object: db(
                "d",
                json!({"backup": {"objectStore": {"endpoint": "ftp://backups.example", "bucket": "site-backups", "credentials": {"secretName": "s3"}}}}),
            ),
            message: "spec.backup.objectStore.endpoint in body should match",
        },
        Invalid {
            case: "db: backup to a bucket S3 would refuse",
            object: db(
                "d",
                json!({"backup": {"objectStore": {"endpoint": "https://s3.example", "bucket": "Site_Backups", "credentials": {"secretName": "s3"}}}}),
            ),
            message: "spec.backup.objectStore.bucket in body should match",
        },
        Invalid {
            case: "db: a backup schedule that is not cron",
            object: db(
                "d",
                json!({"backup": {"objectStore": {"endpoint": "https://s3.example", "bucket": "site-backups", "credentials": {"secretName": "s3"}}, "schedule": "@daily at 3am"}}),
            ),
            message: "spec.backup.schedule in body should match",
        },
        Invalid {
            case: "db: a retention that keeps by no rule",
            object: db(
                "d",
                json!({"backup": {"objectStore": {"endpoint": "https://s3.example", "bucket": "site-backups", "credentials": {"secretName": "s3"}}, "retention": {}}}),
            ),
            message: "retention needs backups, days or both",
        },
        Invalid {
            case: "db: a recovery source without its path",
            object: db(
                "d",
                json!({"bootstrap": {"recovery": {"source": {"endpoint": "https://s3.example", "bucket": "site-backups", "credentials": {"secretName": "s3"}}}}}),
            ),
            message: "recovery.source.path must name the prefix the backups are under",
        },
        Invalid {
            case: "db: archiving into the recovery source",
            object: db(
                "d",
                json!({"bootstrap": {"recovery": {"source": {"endpoint": "https://s3.example", "bucket": "site-backups", "path": "shop/db", "credentials": {"secretName": "s3"}}}}, "backup": {"objectStore": {"endpoint": "https://s3.example", "bucket": "site-backups", "path": "shop/db", "credentials": {"secretName": "s3"}}}}),
            ),
            message: "backup.objectStore must not be the recovery source",
        },
        Invalid {
            case: "db: no mirrors",
            object: db("d", json!({"mirrors": 0})),
            message: "spec.mirrors in body should be greater than or equal to 1",
        },
        Invalid {
            case: "db: switchover to a stranger",
            object: db("d", json!({"primary": "other-1"})),
            message: "spec.primary must name a member of this DatabaseMirror",
        },
        Invalid {
            case: "db: switchover past the last member",
            object: db("d", json!({"mirrors": 1, "primary": "d-3"})),
            message: "spec.primary must name a member of this DatabaseMirror",
        },
        Invalid {
            case: "db: storage missing",
            object: json!({"apiVersion": "hostwright.io/v1alpha1", "kind": "DatabaseMirror", "metadata": {"name": "d"}, "spec": {"instance": {"image": "postgres:15"}}}),
            message: "spec.instance.storage: Required value",
        },
        Invalid {
            case: "db: reserved parameter",
            object: db(
                "d",
                json!({"instance": {"storage": {"size": "1Gi"}, "parameters": {"wal_level": "minimal"}}}),
            ),
            message: "parameters must not set a setting the operator manages for replication",
        },
        Invalid {
            case: "db: parameter value smuggling a setting on a new line",
            object: db(
                "d",
                json!({"instance": {"parameters": {"application_name": "'x'\nsynchronous_commit = off"}}}),
            ),
            message: "spec.instance.parameters.application_name in body should match",
        },
        Invalid {
            case: "db: reserved parameter in upper case",
            object: db("d", json!({"instance": {"parameters": {"WAL_LEVEL": "minimal"}}})),
            message: "parameters must not set a setting the operator manages for replication",
        },
        Invalid {
            case: "db: parameter name that is not a setting name",
            object: db("d", json!({"instance": {"parameters": {"port = 1 #": "x"}}})),
            message: "parameter names must be PostgreSQL setting names",
        },
        Invalid {
            case: "db: unknown replication",
            object: db("d", json!({"replication": "semi"})),
            message: "spec.replication: Unsupported value: \"semi\"",
        },
        Invalid {
            case: "db: reserved owner",
            object: db("d", json!({"owner": "postgres"})),
            message: "owner must not be a role the operator reserves",
        },
        Invalid {
            case: "db: negative maxLagBytes",
            object: db("d", json!({"failover": {"maxLagBytes": -1}})),
            message: "spec.failover.maxLagBytes in body should be greater than or equal to 0",
        },
    ]
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_a_clear_message() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "invalid", &[]).await?;
    let cases = invalid_objects();
    assert!(cases.len() >= 12);
    let mut failures = Vec::new();
    for case in &cases {
        let kind = case.object["kind"].as_str().unwrap_or_default();
        let ar = ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk("hostwright.io", "v1alpha1", kind));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
        let obj: DynamicObject = serde_json::from_value(case.object.clone())?;
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {
                failures.push(format!("{}: accepted, expected rejection with {:?}", case.case, case.message))
            }
            Err(kube::Error::Api(status)) if status.code == 422 && status.message.contains(case.message) => {}
            Err(e) => failures.push(format!("{}: expected {:?}, got {e}", case.case, case.message)),
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn valid_objects_are_accepted_and_defaulted() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "defaults", &[]).await?;
    let pp = PostParams::default();
    let wc = ns
        .api::<WebCluster>()
        .create(&pp, &serde_json::from_value(web("site", json!({"image": "nginx:1.27"})))?)
        .await?;
    assert_eq!(wc.spec.replicas, 3);
    assert_eq!(wc.spec.port, 8080);
    assert_eq!(wc.spec.tier, hostwright::api::webcluster::Tier::Production);
    let db = ns
        .api::<DatabaseMirror>()
        .create(&pp, &serde_json::from_value(db("db", json!({"mirrors": 2, "primary": "db-3"})))?)
        .await?;
    assert_eq!(db.spec.mirrors, 2);
    assert_eq!(db.spec.failover.max_lag_bytes, 16 * 1024 * 1024);
    assert_eq!(db.spec.failover.delay.to_string(), "5s");
    let sst =
        ns.api::<SessionStore>().create(&pp, &serde_json::from_value(store("sessions", json!({})))?).await?;
    assert_eq!(sst.spec.replicas, 1);
    Ok(())
}

/// `bootstrap` is where a DatabaseMirror's first data came from: it can be
/// neither added to a running one nor changed or dropped later.
#[tokio::test]
async fn a_recovery_bootstrap_is_set_at_creation_only() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "bootstrap", &[]).await?;
    let api = ns.api::<DatabaseMirror>();
    let source = json!({"endpoint": "https://s3.example", "bucket": "site-backups", "path": "shop/db",
                        "credentials": {"secretName": "s3"}});
    api.create(&PostParams::default(), &serde_json::from_value(db("plain", json!({})))?).await?;
    let recovered =
        json!({"bootstrap": {"recovery": {"source": source, "targetTime": "2026-11-30T06:45:52Z"}}});
    api.create(&PostParams::default(), &serde_json::from_value(db("restored", recovered))?).await?;
    let refused = |result: kube::Result<DatabaseMirror>, message: &str| match result {
        Err(kube::Error::Api(status)) if status.code == 422 && status.message.contains(message) => Ok(()),
        other => Err(anyhow::anyhow!("expected a 422 with {message:?}, got {other:?}")),
    };
    let params = PatchParams::default();
    let add = json!({"spec": {"bootstrap": {"recovery": {"source": source}}}});
    refused(api.patch("plain", &params, &Patch::Merge(&add)).await, "bootstrap is set at creation")?;
    let change = json!({"spec": {"bootstrap": {"recovery": {"targetTime": "2026-11-30T07:00:00Z"}}}});
    refused(api.patch("restored", &params, &Patch::Merge(&change)).await, "bootstrap is set at creation")?;
    let drop = json!({"spec": {"bootstrap": null}});
    refused(api.patch("restored", &params, &Patch::Merge(&drop)).await, "bootstrap is set at creation")?;
    Ok(())
}

/// A DNS-1035 name one character longer than `max`.
fn too_long(max: usize) -> String {
    format!("n{}", "x".repeat(max))
}

#[tokio::test]
async fn the_longest_names_delay_and_odd_parameter_values_are_accepted() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "limits", &[]).await?;
    let pp = PostParams::default();
    let at_limit = |max: usize| format!("n{}", "x".repeat(max - 1));
    let web_name = at_limit(webcluster::MAX_NAME_LENGTH);
    ns.api::<WebCluster>()
        .create(&pp, &serde_json::from_value(web(&web_name, json!({"image": "nginx:1.27"})))?)
        .await?;
    let store_name = at_limit(sessionstore::MAX_NAME_LENGTH);
    let sst = ns
        .api::<SessionStore>()
        .create(&pp, &serde_json::from_value(store(&store_name, json!({"failover": {"delay": "1h"}})))?)
        .await?;
    assert_eq!(sst.spec.failover.delay.as_std(), Duration::from_secs(3600));
    let params = json!({"pg_stat_statements.max": "10000", "application_name": "'it''s' \\ fine", "_x": ""});
    let db_name = at_limit(databasemirror::MAX_NAME_LENGTH);
    let dbm = ns
        .api::<DatabaseMirror>()
        .create(&pp, &serde_json::from_value(db(&db_name, json!({"instance": {"parameters": params}})))?)
        .await?;
    assert_eq!(dbm.spec.instance.parameters.len(), 3);
    Ok(())
}

#[tokio::test]
async fn scaling_below_the_tolerated_failures_is_refused_through_the_scale_subresource() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "scale", &[]).await?;
    let api = ns.api::<WebCluster>();
    api.create(
        &PostParams::default(),
        &serde_json::from_value(web("site", json!({"image": "nginx:1.27", "tolerate": 2})))?,
    )
    .await?;

    let ok = kubectl(&["scale", "wc/site", "--replicas=5", "-n", &ns.name])?;
    assert!(ok.contains("scaled"), "{ok}");
    assert_eq!(api.get("site").await?.spec.replicas, 5);

    let refused = kubectl_raw(&["scale", "wc/site", "--replicas=2", "-n", &ns.name])?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "scaling to 2 with tolerate 2 must fail");
    assert!(stderr.contains("tolerate must be less than replicas"), "{stderr}");
    assert_eq!(api.get("site").await?.spec.replicas, 5);

    // The spec itself can be fixed with one apply: lower tolerate and replicas together.
    let patch = json!({"apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster", "spec": {"image": "nginx:1.27", "tolerate": 1, "replicas": 2}});
    api.patch("site", &PatchParams::apply("hostwright-e2e").force(), &Patch::Apply(&patch)).await?;
    assert_eq!(api.get("site").await?.spec.replicas, 2);
    Ok(())
}

fn web(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster", "metadata": {"name": name}, "spec": spec})
}

fn store(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "hostwright.io/v1alpha1", "kind": "SessionStore", "metadata": {"name": name}, "spec": spec})
}

fn db(name: &str, spec: Value) -> Value {
    let base = json!({"instance": {"image": "postgres:15", "storage": {"size": "1Gi"}}});
    json!({"apiVersion": "hostwright.io/v1alpha1", "kind": "DatabaseMirror", "metadata": {"name": name}, "spec": merge(base, spec)})
}

/// Shallow-recursive JSON merge: objects merge key by key, anything else replaces.
fn merge(mut base: Value, patch: Value) -> Value {
    match (&mut base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                let merged = match b.remove(&k) {
                    Some(old) => merge(old, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            base
        }
        (_, p) => p,
    }
}

#[tokio::test]
async fn every_example_is_accepted_by_the_api_server() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "examples", &[]).await?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    ensure!(!files.is_empty(), "no examples in {}", dir.display());
    for file in files {
        let path = file.to_string_lossy();
        let out = kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", &path])?;
        assert!(out.contains("(server dry run)"), "{path}: {out}");
    }
    Ok(())
}
