//! A TCP proxy in front of the API server that plays a network partition
//! on demand. The test bed runs one per pod and points that pod's agent at
//! it, so a trial can cut one agent off the API server while its server
//! keeps running and its clients keep their connections.
//!
//! While cut, nothing flows on open connections in either direction (they
//! hang, as across a lost link, rather than being reset) and new
//! connections are accepted but never answered. A restore drops every
//! connection that lived through the cut, so its client reconnects, and
//! serves new ones as before.
//!
//! It only ever connects to one loopback address, the local control
//! plane's API server: no trial can make it send anything elsewhere.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Whether traffic flows, and how many cuts were restored: a connection
/// that lived through a cut is dropped by its restore.
#[derive(Clone, Copy, Debug, Default)]
struct Flow {
    cut: bool,
    restores: u64,
}

/// One proxy on an ephemeral port of 127.0.0.1. Dropping it closes the
/// port and every connection through it.
pub struct ApiProxy {
    address: SocketAddr,
    flow: watch::Sender<Flow>,
    task: JoinHandle<()>,
}

impl ApiProxy {
    /// Listen on 127.0.0.1 and forward every connection to `upstream`,
    /// which must be a loopback address.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        if !upstream.ip().is_loopback() {
            bail!("the API proxy forwards to loopback addresses only, not {upstream}");
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the API proxy on 127.0.0.1")?;
        let address = listener.local_addr().context("the API proxy's address")?;
        let (flow, watching) = watch::channel(Flow::default());
        let task = tokio::spawn(accept(listener, upstream, watching));
        Ok(ApiProxy { address, flow, task })
    }

    /// Where clients connect: 127.0.0.1 and the proxy's port.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Partition: open connections hang, new ones get no answer.
    pub fn cut(&self) {
        self.flow.send_if_modified(|f| !std::mem::replace(&mut f.cut, true));
    }

    /// End a partition: drop the connections that lived through it, serve
    /// new ones. Nothing changes while not cut.
    pub fn restore(&self) {
        self.flow.send_if_modified(|f| {
            if !f.cut {
                return false;
            }
            f.cut = false;
            f.restores += 1;
            true
        });
    }

    pub fn is_cut(&self) -> bool {
        self.flow.borrow().cut
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        // The accept task owns the connections' tasks: they end with it.
        self.task.abort();
    }
}

/// The loopback address an API server URL (`https://127.0.0.1:16443`,
/// `https://localhost:6443`, `https://[::1]`) names; anything else is
/// refused, since the proxy must not send anything off this machine.
pub fn loopback_upstream(server: &str) -> Result<SocketAddr> {
    let authority = server
        .strip_prefix("https://")
        .with_context(|| format!("API server {server} is not an https:// URL"))?
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            (host, port.parse().with_context(|| format!("the port of API server {server}"))?)
        }
        _ => (authority, 443),
    };
    let ip: IpAddr = match host.trim_start_matches('[').trim_end_matches(']') {
        "localhost" => Ipv4Addr::LOCALHOST.into(),
        literal => literal.parse().with_context(|| {
            format!("API server {server} is not named by an IP address or localhost: no proxy for it")
        })?,
    };
    if !ip.is_loopback() {
        bail!(
            "API server {server} is not on a loopback address: the API proxy serves the local control plane only"
        );
    }
    Ok(SocketAddr::new(ip, port))
}

/// Accept connections for as long as the proxy lives, cut or not: a
/// partition leaves a client's connection hanging, it never refuses it.
async fn accept(listener: TcpListener, upstream: SocketAddr, flow: watch::Receiver<Flow>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let generation = flow.borrow().restores;
                    connections.spawn(relay(client, upstream, flow.clone(), generation));
                }
                // Out of file descriptors and the like: look again shortly
                // rather than spin.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Carry one connection until either side closes it or a restore ends
/// the cut it lived through.
async fn relay(client: TcpStream, upstream: SocketAddr, flow: watch::Receiver<Flow>, generation: u64) {
    let carry = async {
        // Made while cut: never answered, not even by a connection upstream.
        flowing(&mut flow.clone(), generation).await?;
        let server = TcpStream::connect(upstream).await.ok()?;
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let up = async { pump(client_read, server_write, flow.clone(), generation).await.ok_or(()) };
        let down = async { pump(server_read, client_write, flow.clone(), generation).await.ok_or(()) };
        tokio::try_join!(up, down).ok()
    };
    tokio::select! {
        _ = carry => {}
        () = restored(flow.clone(), generation) => {}
    }
}

/// Copy one direction while traffic flows; `None` when the connection is
/// to be dropped (an error, or a restore after a cut it lived through).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut flow: watch::Receiver<Flow>,
    generation: u64,
) -> Option<()> {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        flowing(&mut flow, generation).await?;
        let read = from.read(&mut buffer).await.ok()?;
        // Bytes that arrive as the cut begins are held, not delivered.
        flowing(&mut flow, generation).await?;
        if read == 0 {
            to.shutdown().await.ok()?;
            return Some(());
        }
        to.write_all(&buffer[..read]).await.ok()?;
    }
}

/// Until traffic flows; `None` if a restore came first (or the proxy is
/// gone): the connection lived through a cut and is to be dropped.
async fn flowing(flow: &mut watch::Receiver<Flow>, generation: u64) -> Option<()> {
    let restores = flow.wait_for(|f| !f.cut || f.restores != generation).await.ok()?.restores;
    (restores == generation).then_some(())
}

/// Once a restore ends the cut a connection of `generation` lived through.
async fn restored(mut flow: watch::Receiver<Flow>, generation: u64) {
    // The guard wait_for returns must not live across an await: not Send.
    let _ = flow.wait_for(|f| f.restores != generation).await.map(drop);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Long enough for a byte to cross loopback many times over.
    const QUIET: Duration = Duration::from_millis(300);

    /// An echo server on 127.0.0.1, standing in for the API server.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("binding the echo server");
        let address = listener.local_addr().expect("the echo server's address");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.into_split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        address
    }

    async fn echo(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut answer = vec![0; message.len()];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    }

    /// Whether a read gets nothing at all (no data, no close) for a while.
    async fn hangs(stream: &mut TcpStream) -> bool {
        let mut byte = [0; 1];
        tokio::time::timeout(QUIET, stream.read(&mut byte)).await.is_err()
    }

    #[tokio::test]
    async fn traffic_flows_hangs_while_cut_and_resumes_on_new_connections() {
        let proxy = ApiProxy::start(echo_server().await).await.expect("starting the proxy");
        let mut before = TcpStream::connect(proxy.address()).await.expect("connecting");
        assert_eq!(echo(&mut before, b"ping").await.expect("echo"), b"ping", "traffic flows");

        proxy.cut();
        assert!(proxy.is_cut());
        before.write_all(b"lost").await.expect("writes still go into the socket");
        assert!(hangs(&mut before).await, "an open connection hangs, neither answered nor reset");
        let mut during = tokio::time::timeout(QUIET, TcpStream::connect(proxy.address()))
            .await
            .expect("a new connection is accepted while cut")
            .expect("connecting while cut");
        during.write_all(b"hello").await.expect("writing while cut");
        assert!(hangs(&mut during).await, "a new connection gets no answer");

        proxy.restore();
        assert!(!proxy.is_cut());
        for (what, hung) in [("open before the cut", &mut before), ("made during the cut", &mut during)] {
            let mut rest = Vec::new();
            let closed = tokio::time::timeout(QUIET, hung.read_to_end(&mut rest)).await;
            assert!(closed.is_ok(), "a connection {what} is dropped on restore");
            assert!(rest.is_empty(), "nothing held during the cut arrives on a connection {what}: {rest:?}");
        }
        let mut after = TcpStream::connect(proxy.address()).await.expect("connecting after the restore");
        assert_eq!(echo(&mut after, b"pong").await.expect("echo"), b"pong", "new connections are served");

        proxy.restore();
        assert_eq!(
            echo(&mut after, b"again").await.expect("echo"),
            b"again",
            "a restore when not cut drops nothing"
        );
    }

    #[tokio::test]
    async fn a_dropped_proxy_closes_its_port_and_connections() {
        let proxy = ApiProxy::start(echo_server().await).await.expect("starting the proxy");
        let address = proxy.address();
        let mut open = TcpStream::connect(address).await.expect("connecting");
        assert_eq!(echo(&mut open, b"ping").await.expect("echo"), b"ping");
        drop(proxy);
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(QUIET, open.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "an open connection is closed with its proxy");
        assert!(TcpStream::connect(address).await.is_err(), "the port is closed");
    }

    #[tokio::test]
    async fn only_loopback_upstreams_are_served() {
        assert!(ApiProxy::start("10.96.0.1:443".parse().expect("an address")).await.is_err());
        assert!(ApiProxy::start("192.168.1.1:6443".parse().expect("an address")).await.is_err());
    }

    #[test]
    fn api_server_urls_name_loopback_addresses() {
        let parsed = |url: &str| loopback_upstream(url).ok().map(|a| a.to_string());
        assert_eq!(parsed("https://127.0.0.1:16443").as_deref(), Some("127.0.0.1:16443"));
        assert_eq!(parsed("https://127.0.0.1:18443/").as_deref(), Some("127.0.0.1:18443"));
        assert_eq!(parsed("https://localhost:6443").as_deref(), Some("127.0.0.1:6443"));
        assert_eq!(parsed("https://[::1]:6443").as_deref(), Some("[::1]:6443"));
        assert_eq!(parsed("https://[::1]").as_deref(), Some("[::1]:443"));
        assert_eq!(parsed("https://127.0.0.2").as_deref(), Some("127.0.0.2:443"));
        assert_eq!(parsed("https://10.96.0.1:443"), None, "not loopback");
        assert_eq!(parsed("https://kubernetes.default.svc"), None, "a name other than localhost");
        assert_eq!(parsed("http://127.0.0.1:8080"), None, "not TLS");
        assert_eq!(parsed("https://127.0.0.1:port"), None);
    }
}
