//! The site SLO suite: the demo site on the real nodes (real containers,
//! kube-proxy, the cluster DNS), a few hundred visitors with session cookies
//! requesting pages through its Service without pause, through a rollout, a
//! lost node, a drain, the loss of each store's primary and of the
//! operator's leader (see [`hostwright_e2e::site_slo`]).
//!
//! Before the events, isolation between sites: the stores refuse pods of
//! another site or another web tier (see [`hostwright_e2e::site_isolation`]).
//!
//! Asserted: not one failed request during the rollout and the drain, and
//! not one session lost or acknowledged page view missing through any
//! event. Failed requests during the other events are printed as figures
//! (`make bench` reports them as `site.*`).

use anyhow::{Result, ensure};
use hostwright_e2e::site_isolation;
use hostwright_e2e::site_slo::SiteScenario;
use hostwright_e2e::{client, ensure_crds};

const USERS: usize = 200;
const WORKERS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_keeps_its_visitors_sessions_and_page_views_through_every_event() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let mut site = SiteScenario::start(&client).await?;
    let steady = site.visit(USERS, WORKERS).await?;
    println!("{steady}");
    ensure!(steady.failed == 0 && steady.requests > 0, "the site failed before anything happened: {steady}");
    // The stores admit the site's web pods and no other site's pods.
    let isolation = site_isolation::check(&client, site.namespace()).await?;
    for line in &isolation.lines {
        println!("isolation: {line}");
    }
    println!("isolation: the database sees connections from all {} web pods", isolation.web_clients);
    let events = site.run_events(|report| println!("{report}")).await?;
    let after = site.finish().await?;
    println!("{after}");
    for report in events.iter().chain([&after]) {
        ensure!(report.sessions_lost == 0, "sessions lost: {report}");
        ensure!(report.rows_lost == 0, "acknowledged page views lost: {report}");
        if report.event != "after" {
            ensure!(report.requests > 0, "no visitor was served: {report}");
        }
        if ["rollout", "drain"].contains(&report.event) {
            ensure!(report.failed == 0, "requests failed: {report}");
        }
    }
    Ok(())
}
