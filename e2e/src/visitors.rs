//! Visitors of the demo site: a few hundred users, each with a cookie jar
//! of one cookie, logging in and then requesting pages through the site's
//! Service without pause, each request on a new connection (so kube-proxy
//! spreads them over every web pod). What they saw is tallied per event:
//! requests, failed requests, users found logged out (sessions lost), and
//! the ids of the page views the site acknowledged (rows that must exist).
//!
//! Each worker is one client machine, at one of the addresses the test
//! bed offers (`HOSTWRIGHT_CLIENT_ADDRS`, see `e2e/lib/nodes.sh`): it sends
//! from that address and takes source ports in turn through the
//! whole ephemeral range, so no port comes round again within a run. A
//! port that came round could meet the conntrack entry a node keeps for a
//! connection whose pod died with its node: kube-proxy removes no TCP
//! entries (kubernetes/kubernetes#101607, #104098), a half-open connection's
//! entry stays ESTABLISHED for days, and a new SYN on its tuple is sent to
//! the dead pod ("No route to host"). connect(2)'s own choice walks the
//! range with random strides and comes round after about 3,000 connections
//! to one Service, a couple of minutes for a worker here.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// What the visitors saw since the last [`Visitors::take`].
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub requests: u64,
    pub failed: u64,
    /// Users whose session was gone (a page answered "visitor" to a user
    /// who had logged in and was not logged out on purpose).
    pub sessions_lost: u64,
    /// A few of the failures, for the report.
    pub why: Vec<String>,
    /// Page views the site acknowledged (their row ids).
    pub views: Vec<i64>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.requests += other.requests;
        self.failed += other.failed;
        self.sessions_lost += other.sessions_lost;
        self.why.extend(other.why);
        self.why.truncate(MAX_REASONS);
        self.views.extend(other.views);
    }
}

const MAX_REASONS: usize = 5;
/// Bound of one request, connection included. A page retries a store for up
/// to 8 s before answering 503, so a slow page is not a failed one.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// GET `path` from `addr` (host:port) over HTTP/1.1 on a new connection,
/// sending `cookie` if given.
pub async fn get(addr: &str, path: &str, cookie: Option<&str>) -> Result<Answer> {
    get_from(None, addr, path, cookie).await
}

/// [`get`], from `machine` when given.
async fn get_from(
    machine: Option<&mut ClientMachine>,
    addr: &str,
    path: &str,
    cookie: Option<&str>,
) -> Result<Answer> {
    let exchange = async {
        let mut stream = connect(machine, addr).await.with_context(|| format!("connecting to {addr}"))?;
        let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        parse(&String::from_utf8_lossy(&response))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.with_context(|| format!("GET {path}: timed out"))?
}

async fn connect(machine: Option<&mut ClientMachine>, addr: &str) -> Result<tokio::net::TcpStream> {
    let Some(machine) = machine else { return Ok(tokio::net::TcpStream::connect(addr).await?) };
    let target: SocketAddr = tokio::net::lookup_host(addr).await?.next().context("an address")?;
    for _ in 0..PORT_TRIES {
        let socket = if machine.addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        let source = SocketAddr::new(machine.addr, machine.take_port());
        match socket.bind(source) {
            Ok(()) => return socket.connect(target).await.with_context(|| format!("from {source}")),
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(err) => return Err(err.into()),
        }
    }
    bail!("no free source port on {} in {PORT_TRIES} tries", machine.addr)
}

/// Ports a machine skips (still in use by an earlier connection) before it
/// gives up on one request.
const PORT_TRIES: usize = 64;

/// One simulated client machine: its address, and its source ports taken
/// in turn through the ephemeral range (see the module doc).
#[derive(Clone, Debug)]
struct ClientMachine {
    addr: IpAddr,
    ports: std::ops::RangeInclusive<u16>,
    next: u16,
}

impl ClientMachine {
    /// A machine at `addr` walking `ports` from the `offset`-th, modulo
    /// their number (a random offset per run, so runs on one cluster do not
    /// retrace each other's ports).
    fn new(addr: IpAddr, ports: std::ops::RangeInclusive<u16>, offset: u16) -> Self {
        let (low, high) = (*ports.start(), *ports.end());
        let span = u32::from(high - low) + 1;
        let next = low + u16::try_from(u32::from(offset) % span).unwrap_or(0);
        ClientMachine { addr, ports, next }
    }

    fn take_port(&mut self) -> u16 {
        let port = self.next;
        self.next = if port >= *self.ports.end() { *self.ports.start() } else { port + 1 };
        port
    }
}

/// This machine's ephemeral port range (ports other programs do not bind
/// by number), Linux's default where it cannot be read.
fn ephemeral_ports() -> std::ops::RangeInclusive<u16> {
    let read = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = read.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
    match (bounds.next(), bounds.next()) {
        (Some(low), Some(high)) if low < high => low..=high,
        _ => 32768..=60999,
    }
}

/// The addresses the test bed lets load generators send from (none: the
/// machine's own): `HOSTWRIGHT_CLIENT_ADDRS` as set, else as `e2e/cluster
/// env` says (so `make test`, which sources none of it, gets them too).
fn client_addrs() -> Vec<IpAddr> {
    let listed = std::env::var(CLIENT_ADDRS_VAR)
        .ok()
        .or_else(|| crate::cluster_env().ok()?.remove(CLIENT_ADDRS_VAR))
        .unwrap_or_default();
    listed.split(',').filter_map(|a| a.trim().parse().ok()).collect()
}

/// The setting that lists the client addresses (see `e2e/lib/nodes.sh`).
const CLIENT_ADDRS_VAR: &str = "HOSTWRIGHT_CLIENT_ADDRS";

fn parse(response: &str) -> Result<Answer> {
    let (head, body) = response.split_once("\r\n\r\n").context("an HTTP response")?;
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).context("a status line")?.parse()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Answer { status, headers, body: body.to_string() })
}

/// The `sid` cookie a login answer sets.
fn session_cookie(answer: &Answer) -> Option<String> {
    let set = answer.header("set-cookie")?;
    set.split(';').next().filter(|c| c.starts_with("sid=")).map(str::to_string)
}

/// Log `user` in; the cookie to send from now on.
pub async fn login(addr: &str, user: &str) -> Result<String> {
    let answer = get(addr, &format!("/login?user={user}"), None).await?;
    if answer.status != 200 {
        bail!("login of {user}: status {}: {}", answer.status, answer.body.trim());
    }
    session_cookie(&answer).with_context(|| format!("login of {user} set no session cookie"))
}

/// The users, their workers, and what they saw.
pub struct Visitors {
    seen: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Visitors {
    /// Log `users` users in through `addr` (all must succeed), then let
    /// `workers` tasks request pages for them in turn until [`Visitors::stop`].
    /// Each worker needs a client address of its own: sharing one, their
    /// ports would come round within the run (see the module doc).
    pub async fn start(addr: &str, users: usize, workers: usize) -> Result<Self> {
        let sources = client_addrs();
        anyhow::ensure!(
            sources.len() >= workers.max(1),
            "{workers} visitor workers need as many client addresses, the test bed offers {} \
             ({CLIENT_ADDRS_VAR}, e2e/cluster env): is the cluster up with real nodes?",
            sources.len()
        );
        let mut jars = Vec::with_capacity(users);
        for i in 0..users {
            let user = format!("user-{i}");
            jars.push((user.clone(), login(addr, &user).await?));
        }
        let seen = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let per_worker = users.div_ceil(workers.max(1));
        let (ports, offset) = (ephemeral_ports(), rand::random::<u16>());
        let tasks = jars
            .chunks(per_worker.max(1))
            .enumerate()
            .map(|(worker, chunk)| {
                let (seen, stop, addr, mut chunk) =
                    (seen.clone(), stop.clone(), addr.to_string(), chunk.to_vec());
                let mut machine = ClientMachine::new(sources[worker], ports.clone(), offset);
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        for (user, cookie) in chunk.iter_mut() {
                            let outcome = visit(&mut machine, &addr, user, cookie).await;
                            lock(&seen).add(outcome);
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        Ok(Visitors { seen, stop, tasks })
    }

    /// What was seen since the last call.
    pub fn take(&self) -> Tally {
        std::mem::take(&mut *lock(&self.seen))
    }

    /// Stop, and what was seen since the last [`Visitors::take`].
    pub async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        std::mem::take(&mut *lock(&self.seen))
    }
}

/// One page view by `user`. A user found logged out counts as a lost
/// session and logs in again (counted as a request too).
async fn visit(machine: &mut ClientMachine, addr: &str, user: &str, cookie: &mut String) -> Tally {
    let mut tally = Tally { requests: 1, ..Tally::default() };
    let answer = match get_from(Some(machine), addr, "/", Some(cookie)).await {
        Ok(answer) if answer.status == 200 => answer,
        Ok(answer) => return tally.failed(format!("status {}: {}", answer.status, answer.body.trim())),
        Err(err) => return tally.failed(format!("{err:#}")),
    };
    if let Some(view) = answer.header("x-view-id").and_then(|v| v.parse().ok()) {
        tally.views.push(view);
    }
    if answer.header("x-user") != Some(user) {
        tally.sessions_lost = 1;
        tally.requests += 1;
        match login(addr, user).await {
            Ok(new) => *cookie = new,
            Err(err) => return tally.failed(format!("logging in again: {err:#}")),
        }
    }
    tally
}

impl Tally {
    fn failed(mut self, why: String) -> Tally {
        self.failed += 1;
        self.why.push(why);
        self
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Of `views`, the ids missing from the site's `page_views` table (read on
/// the primary through `db`).
pub async fn lost_views(db: &tokio_postgres::Client, views: &[i64]) -> Result<Vec<i64>> {
    let rows = db.query("SELECT id FROM page_views WHERE id = ANY($1)", &[&views]).await?;
    let present: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    Ok(views.iter().copied().filter(|v| !present.contains(v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_parsed_with_its_headers() {
        let answer =
            parse("HTTP/1.1 200 OK\r\nset-cookie: sid=ab12; Path=/; HttpOnly\r\nx-view-id: 7\r\n\r\nhello")
                .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("X-View-Id"), Some("7"));
        assert_eq!(session_cookie(&answer).as_deref(), Some("sid=ab12"));
        assert_eq!(answer.body, "hello");
    }

    #[test]
    fn tallies_add_up_and_keep_a_few_reasons() {
        let mut total = Tally::default();
        for i in 0..10 {
            total.add(Tally {
                requests: 2,
                failed: 1,
                why: vec![format!("{i}")],
                views: vec![i],
                ..Tally::default()
            });
        }
        assert_eq!((total.requests, total.failed, total.views.len()), (20, 10, 10));
        assert_eq!(total.why.len(), MAX_REASONS);
    }

    #[test]
    fn a_machine_takes_every_port_of_its_range_before_one_comes_round() {
        let addr = "192.0.2.7".parse().unwrap();
        let mut machine = ClientMachine::new(addr, 32768..=60999, 60990 - 32768);
        let taken: Vec<u16> = (0..28232).map(|_| machine.take_port()).collect();
        assert_eq!(taken[0], 60990);
        assert_eq!(taken[10], 32768, "after the last port, the first");
        let distinct: BTreeSet<u16> = taken.iter().copied().collect();
        assert_eq!(distinct.len(), 28232, "no port twice in one round");
        assert_eq!(machine.take_port(), 60990, "the round over, the walk starts again");
        assert_eq!(
            ClientMachine::new(addr, 1000..=1009, 65535).take_port(),
            1005,
            "any start falls in range"
        );
    }

    /// A thousand and a half connections in a row from one machine, as one
    /// visitor worker makes in a test, over real sockets: each from the
    /// next port.
    #[tokio::test]
    async fn a_machine_connects_from_its_ports_in_turn() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((closed_by_the_server, _)) = listener.accept().await {
                drop(closed_by_the_server);
            }
        });
        let mut machine = ClientMachine::new("127.0.0.1".parse().unwrap(), ephemeral_ports(), rand::random());
        let mut ports = BTreeSet::new();
        for n in 1..=1500 {
            let mut stream = connect(Some(&mut machine), &target).await.unwrap();
            assert!(ports.insert(stream.local_addr().unwrap().port()), "port repeated at connection {n}");
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap();
        }
    }
}
