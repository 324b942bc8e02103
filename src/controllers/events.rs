//! Publishing Events, with a recorder whose memory is bounded.
//!
//! kube's `Recorder` keeps every Event it published in the last six minutes,
//! to count repeats into a series instead of creating a new Event. Its map
//! drops old entries only when it publishes the next and never gives back
//! its table: after a thousand sites were created, each with its Events, the
//! operator held about 9 MB of table for good (heaptrack, N = 1000). So
//! [`Events`] starts a fresh recorder after [`GENERATION`] Events, or once
//! the current one is older than the series window. The price: an Event that
//! repeats across a renewal starts a new series (one more Event object).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, Recorder, Reporter};
use tokio::time::Instant;

/// How long kube's recorder keeps an Event to count repeats into its series.
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// Events one recorder publishes before the next takes over.
pub const GENERATION: u32 = 256;

/// How often an idle recorder is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(60);

/// The operator's one Event recorder, shared by every controller.
pub struct Events {
    client: Client,
    reporter: Reporter,
    current: Mutex<Generation>,
}

/// One recorder and what it has published.
struct Generation {
    recorder: Recorder,
    started: Instant,
    published: u32,
}

impl Generation {
    fn new(client: &Client, reporter: &Reporter, now: Instant) -> Self {
        Generation { recorder: Recorder::new(client.clone(), reporter.clone()), started: now, published: 0 }
    }
}

impl Events {
    pub fn new(client: Client, identity: &str) -> Self {
        let reporter = Reporter { controller: "hostwright".into(), instance: Some(identity.to_string()) };
        let current = Generation::new(&client, &reporter, Instant::now());
        Events { client, reporter, current: Mutex::new(current) }
    }

    /// Publish `event` about the object `reference` names.
    pub async fn publish(&self, event: &Event, reference: &ObjectReference) -> Result<(), kube::Error> {
        // A clone shares the recorder's cache; the lock is not held across
        // the request.
        let recorder = {
            let mut current = self.lock();
            if current.published >= GENERATION {
                *current = self.fresh(Instant::now());
            }
            current.published += 1;
            current.recorder.clone()
        };
        recorder.publish(event, reference).await
    }

    /// Start a fresh recorder if the current one published anything and is
    /// older than [`SERIES_WINDOW`]: each of its entries has expired, and a
    /// quiet operator should not hold them. Returns whether it did.
    pub fn renew_if_old(&self, now: Instant) -> bool {
        let mut current = self.lock();
        let old = current.published > 0 && now.saturating_duration_since(current.started) > SERIES_WINDOW;
        if old {
            *current = self.fresh(now);
        }
        old
    }

    /// [`Events::renew_if_old`] every minute, for as long as it is polled.
    pub async fn keep_renewing(&self) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.renew_if_old(Instant::now()) {
                tracing::debug!("Event recorder renewed after {SERIES_WINDOW:?}");
            }
        }
    }

    fn fresh(&self, now: Instant) -> Generation {
        Generation::new(&self.client, &self.reporter, now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generation> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> Events {
        // A client of an address where nothing listens: renewing makes no request.
        crate::tls::client::install_default_provider();
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        Events::new(Client::try_from(config).unwrap(), "test")
    }

    #[tokio::test]
    async fn a_recorder_that_never_published_is_kept() {
        let events = events();
        assert!(!events.renew_if_old(Instant::now() + SERIES_WINDOW * 2));
    }

    #[tokio::test]
    async fn a_recorder_is_renewed_only_after_the_series_window() {
        let events = events();
        let started = events.lock().started;
        events.lock().published = 1;
        assert!(!events.renew_if_old(started + SERIES_WINDOW));
        assert!(events.renew_if_old(started + SERIES_WINDOW + Duration::from_secs(1)));
        // Once renewed, it is fresh: nothing more to renew.
        assert!(!events.renew_if_old(started + SERIES_WINDOW * 3));
    }

    #[tokio::test]
    async fn a_full_generation_hands_over_to_a_fresh_recorder() {
        let events = events();
        events.lock().published = GENERATION;
        let reference = ObjectReference { name: Some("a".into()), ..ObjectReference::default() };
        let event = Event {
            type_: kube::runtime::events::EventType::Normal,
            reason: "Test".into(),
            note: None,
            action: "Test".into(),
            secondary: None,
        };
        // The request fails (nothing listens); the hand-over happened first.
        assert!(events.publish(&event, &reference).await.is_err());
        assert_eq!(events.lock().published, 1);
    }
}
