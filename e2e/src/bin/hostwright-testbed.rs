//! `hostwright-testbed [--root DIR]`: the test bed's volume provisioner and
//! database pod runner (see `hostwright_e2e::testbed`) for every namespace
//! but the tests' own, until SIGTERM or Ctrl-C. `make demo` runs it beside
//! the operator, so the demo's DatabaseMirrors get real PostgreSQL servers.
//!
//! The root holds the volumes and pod files; by default it is `testbed/` in
//! the local cluster's state directory, so `e2e/cluster down` removes it
//! (and stops any server left on it) with the cluster.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use hostwright_e2e::testbed::Testbed;
use tokio::signal::unix::{SignalKind, signal};

fn root() -> Result<PathBuf> {
    let mut args = std::env::args().skip(1);
    let mut root = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--root" => root = Some(PathBuf::from(args.next().context("--root needs a directory")?)),
            _ if arg.starts_with("--root=") => root = Some(PathBuf::from(&arg["--root=".len()..])),
            "-h" | "--help" => {
                println!("usage: hostwright-testbed [--root DIR]   (KUBECONFIG names the cluster)");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {arg:?} (usage: hostwright-testbed [--root DIR])"),
        }
    }
    if let Some(root) = root {
        return Ok(root);
    }
    if let Some(cluster) = std::env::var_os("HOSTWRIGHT_CLUSTER_DIR") {
        return Ok(PathBuf::from(cluster).join("testbed"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set: pass --root")?;
    Ok(PathBuf::from(home).join(".cache/hostwright/cluster/testbed"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hostwright-testbed: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let root = root()?;
    let client = hostwright_e2e::client().await?;
    let testbed = Testbed::start(client, None, root).await?;
    eprintln!(
        "hostwright-testbed: serving all namespaces but the tests'; files under {}",
        testbed.root().display()
    );
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("hostwright-testbed: stopping the agents");
    testbed.stop().await
}
