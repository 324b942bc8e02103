//! A client that writes numbered records to a store without pause, the way a
//! busy site does, reconnecting (re-resolving the Service) on any error, and
//! records every write the store confirmed and on which connection. One
//! writer for PostgreSQL rows and Redis sessions alike: a [`Target`] says
//! how to connect and what one write is.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::task::JoinHandle;

/// How to reach a store and write record `id` to it.
pub trait Target: Send + Sync + 'static {
    type Connection: Send;
    /// A new connection to whatever the store's write Service routes to now.
    fn connect(&self) -> impl Future<Output = Result<Self::Connection>> + Send;
    /// Write record `id`; Ok only once the store confirmed it.
    fn write(&self, connection: &mut Self::Connection, id: i64) -> impl Future<Output = Result<()>> + Send;
}

/// A confirmed write: its id, when it was confirmed, and when the
/// connection it went over was opened.
type Confirmed = (i64, Instant, Instant);

pub struct Writer {
    acked: Arc<Mutex<Vec<Confirmed>>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Writer {
    /// Start writing to `target` every ~10 ms until [`Writer::stop`].
    pub fn run<T: Target>(target: T) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut next: i64 = 1;
                while !stop.load(Ordering::Relaxed) {
                    let connected = Instant::now();
                    let Ok(Ok(mut connection)) =
                        tokio::time::timeout(Duration::from_secs(10), target.connect()).await
                    else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let id = next;
                        next += 1;
                        let write =
                            tokio::time::timeout(Duration::from_secs(5), target.write(&mut connection, id));
                        match write.await {
                            Ok(Ok(())) => lock(&acked).push((id, Instant::now(), connected)),
                            _ => break,
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        };
        Self { acked, stop, task }
    }

    /// When each confirmed write was confirmed.
    pub fn acked_at(&self) -> std::collections::HashMap<i64, Instant> {
        lock(&self.acked).iter().map(|(id, at, _)| (*id, *at)).collect()
    }

    /// Confirmed writes so far.
    pub fn acked(&self) -> Vec<i64> {
        lock(&self.acked).iter().map(|(id, _, _)| *id).collect()
    }

    /// When the first write confirmed after `t` was confirmed.
    pub fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        lock(&self.acked).iter().map(|(_, at, _)| *at).find(|at| *at > t)
    }

    /// When the first write on a connection opened after `t` (so: on
    /// whatever the Service routed to after `t`) was confirmed.
    pub fn first_ack_reconnected_after(&self, t: Instant) -> Option<Instant> {
        lock(&self.acked).iter().find(|(_, _, connected)| *connected > t).map(|(_, at, _)| *at)
    }

    /// Stop writing; every confirmed id.
    pub async fn stop(self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        let acked = self.acked.clone();
        let _ = self.task.await;
        lock(&acked).iter().map(|(id, _, _)| *id).collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
