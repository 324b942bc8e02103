//! `kubectl hostwright`, found by kubectl itself on the PATH as
//! `kubectl-hostwright` (a link to the operator's binary), against the
//! real API server.

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use hostwright_e2e::{TestNamespace, client, ensure_crds};

/// A directory holding `kubectl-hostwright`, linked to the binary under
/// test, and PATH with it first.
fn plugin_path(ns: &str) -> Result<(std::path::PathBuf, String)> {
    let dir = std::env::temp_dir().join(format!("hostwright-plugin-{ns}"));
    std::fs::create_dir_all(&dir)?;
    let link = dir.join("kubectl-hostwright");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(hostwright_e2e::operator::binary(), &link)?;
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    Ok((dir, path))
}

fn kubectl(path: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new("kubectl")
        .args(args)
        .env("PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl")?;
    if let Some(input) = stdin {
        child.stdin.take().context("kubectl's stdin")?.write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn the_site_it_prints_is_accepted_by_the_api_server_in_both_tiers() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "plugin", &[]).await?;
    let (dir, path) = plugin_path(&ns.name)?;
    ensure!(
        kubectl(&path, &["plugin", "list"], None)?.contains("kubectl-hostwright"),
        "kubectl does not list the plugin"
    );

    for (name, tier) in [("shop", &[][..]), ("shop-staging", &["--staging"][..])] {
        let mut args = vec!["hostwright", "site", name, "--host", "shop.example.com"];
        args.extend_from_slice(tier);
        let yaml = kubectl(&path, &args, None)?;
        let applied = kubectl(&path, &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"], Some(&yaml))?;
        println!("{}", applied.trim());
        for object in [
            format!("sessionstore.hostwright.io/{name}-sessions"),
            format!("databasemirror.hostwright.io/{name}-db"),
            format!("webcluster.hostwright.io/{name}"),
        ] {
            ensure!(applied.contains(&object), "{object} not applied:\n{applied}\n{yaml}");
        }
    }

    let refused =
        Command::new("kubectl").args(["hostwright", "site", "Not_A_Name"]).env("PATH", &path).output()?;
    let why = String::from_utf8_lossy(&refused.stderr);
    std::fs::remove_dir_all(&dir)?;
    ensure!(
        !refused.status.success() && why.contains("DNS-1035"),
        "a bad site name was not refused clearly: {why}"
    );
    Ok(())
}
