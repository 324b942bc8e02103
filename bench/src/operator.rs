//! The operator under test: a fresh `hostwright run` process per fleet size,
//! its Prometheus metrics and its memory from /proc.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct Operator {
    child: Option<Child>,
    pub pid: u32,
    port: u16,
    pid_file: PathBuf,
}

impl Operator {
    /// Start `binary run` (with `extra_args`) against `kubeconfig`, logging
    /// to `log`, and wait until it reports ready (its caches are filled).
    pub async fn start(
        binary: &Path,
        kubeconfig: &Path,
        log: &Path,
        pid_file: &Path,
        extra_args: &[&str],
    ) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(binary)
            .args(["run", "--leader-elect=false", "--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(extra_args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", std::env::var("BENCH_OPERATOR_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id();
        std::fs::write(pid_file, pid.to_string())?;
        let mut op = Operator { child: Some(child), pid, port, pid_file: pid_file.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if op.get("/readyz").is_ok() {
                return Ok(op);
            }
            if let Some(child) = op.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("the operator exited with {status} before it was ready; log: {}", log.display());
            }
            if Instant::now() >= deadline {
                bail!("the operator was not ready after 60 s; log: {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn get(&self, path: &str) -> Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head.lines().next().unwrap_or_default();
        if !status.contains(" 200") {
            bail!("GET {path}: {status}");
        }
        Ok(body.to_string())
    }

    /// The operator's metrics right now.
    pub fn metrics(&self) -> Result<Metrics> {
        Ok(Metrics::parse(&self.get("/metrics")?))
    }

    /// (VmHWM, VmRSS) in MiB from /proc/<pid>/status.
    pub fn memory_mib(&self) -> Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .context("reading the operator's /proc status")?;
        let field = |name: &str| -> Result<f64> {
            let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name}"))?;
            let kib: f64 = line.split_whitespace().nth(1).context("empty line")?.parse()?;
            Ok(kib / 1024.0)
        };
        Ok((field("VmHWM:")?, field("VmRSS:")?))
    }

    /// CPU time (user + system) the operator used so far, in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        crate::cpu::process_seconds(self.pid)
    }

    /// SIGTERM, and wait for a clean exit (SIGKILL after 30 s).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            hostwright_e2e::signal(child.id(), libc::SIGTERM).context("sending the operator SIGTERM")?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = std::fs::remove_file(&self.pid_file);
        }
        Ok(())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&self.pid_file);
        }
    }
}

/// The figures the benchmark reads from the operator's /metrics.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// hostwright_api_writes_total by "resource/verb".
    pub writes: BTreeMap<String, f64>,
    pub reconciles: f64,
    pub reconcile_errors: f64,
    pub reconcile_seconds_sum: f64,
    /// (upper bound, cumulative count) of hostwright_reconcile_duration_seconds.
    pub reconcile_buckets: Vec<(f64, f64)>,
}

impl Metrics {
    fn parse(text: &str) -> Self {
        let mut m = Metrics::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            let label = |key: &str| {
                labels.split(',').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k == key).then(|| v.trim_matches('"').to_string())
                })
            };
            match name {
                "hostwright_api_writes_total" => {
                    let key = format!(
                        "{}/{}",
                        label("resource").unwrap_or_default(),
                        label("verb").unwrap_or_default()
                    );
                    *m.writes.entry(key).or_default() += value;
                }
                "hostwright_reconciliations_total" => m.reconciles += value,
                "hostwright_reconcile_errors_total" => m.reconcile_errors += value,
                "hostwright_reconcile_duration_seconds_sum" => m.reconcile_seconds_sum += value,
                "hostwright_reconcile_duration_seconds_bucket" => {
                    let le = label("le").unwrap_or_default();
                    let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
                    match m.reconcile_buckets.iter_mut().find(|(b, _)| *b == bound) {
                        Some((_, c)) => *c += value,
                        None => m.reconcile_buckets.push((bound, value)),
                    }
                }
                _ => {}
            }
        }
        m.reconcile_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        m
    }

    pub fn total_writes(&self) -> f64 {
        self.writes.values().sum()
    }

    /// Writes by "resource/verb" between `before` and `self`, non-zero only.
    pub fn writes_since(&self, before: &Metrics) -> BTreeMap<String, u64> {
        self.writes
            .iter()
            .map(|(k, v)| (k.clone(), count(v - before.writes.get(k).copied().unwrap_or(0.0))))
            .filter(|(_, d)| *d != 0)
            .collect()
    }
}

/// A counter (or a difference of counters) as the integer it is.
pub fn count(v: f64) -> u64 {
    v.round().max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_operators_metrics() {
        let text = "# HELP x\n\
            hostwright_api_writes_total{controller=\"webcluster\",resource=\"deployments\",verb=\"apply\"} 3\n\
            hostwright_api_writes_total{controller=\"webcluster\",resource=\"events\",verb=\"create\"} 2\n\
            hostwright_reconciliations_total{controller=\"webcluster\"} 7\n\
            hostwright_reconcile_duration_seconds_sum{controller=\"webcluster\"} 0.5\n\
            hostwright_reconcile_duration_seconds_bucket{le=\"0.005\",controller=\"webcluster\"} 4\n\
            hostwright_reconcile_duration_seconds_bucket{le=\"+Inf\",controller=\"webcluster\"} 7\n";
        let m = Metrics::parse(text);
        assert_eq!(m.total_writes(), 5.0);
        assert_eq!(m.writes["deployments/apply"], 3.0);
        assert_eq!(m.reconciles, 7.0);
        assert_eq!(m.reconcile_buckets, vec![(0.005, 4.0), (f64::INFINITY, 7.0)]);
    }
}
