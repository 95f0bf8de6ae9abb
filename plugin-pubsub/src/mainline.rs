//! Sensor subscriptions on the BitTorrent Mainline DHT, where peers know only BEP44: polling.
//!
//! Each poll is a BEP44 `get` carrying the last seq seen, so nodes send the value only when
//! theirs is newer. The interval adapts: back to [`PollConfig::min_interval`] after a change,
//! growing by [`PollConfig::backoff`] while nothing changes, up to
//! [`PollConfig::max_interval`]. With the 1 s floor, one subscriber sends each storing node at
//! most one query a second: a fifth of libtorrent's per-IP limit (5 packets/s, MAINLINE.md).

use std::time::Duration;

use bytes::Bytes;
use kad_plugin_bep44::{Mainline, MainlineError};
use tokio::sync::mpsc;

use crate::wire::WireItem;

/// Timing of a Mainline poll.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PollConfig {
    /// Interval after a new reading (and the first one). At least 1 s.
    pub min_interval: Duration,
    /// Longest interval while nothing changes.
    pub max_interval: Duration,
    /// Growth factor of the interval per poll without a change.
    pub backoff: f64,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(30),
            backoff: 1.5,
        }
    }
}

impl PollConfig {
    /// The floor of `min_interval`: politeness towards Mainline nodes.
    pub const FLOOR: Duration = Duration::from_secs(1);

    /// The interval after `interval` when a poll brought nothing new.
    pub fn next_interval(&self, interval: Duration) -> Duration {
        let lo = self.min_interval.max(Self::FLOOR);
        let hi = self.max_interval.max(lo);
        let factor = if self.backoff.is_finite() {
            self.backoff.clamp(1.0, 10.0)
        } else {
            1.5
        };
        interval.min(hi).mul_f64(factor).clamp(lo, hi)
    }
}

/// One poll's news.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Polled {
    /// The new reading (verified by the BEP44 client: signature, key, salt).
    pub item: WireItem,
    /// Polls so far.
    pub polls: u64,
    /// Time the `get` that found it took.
    pub elapsed: Duration,
}

/// Polls the sensor `pubkey`/`salt` on Mainline until the receiver is dropped; yields each
/// reading newer than the last one.
pub fn poll_sensor(
    mainline: Mainline,
    pubkey: [u8; 32],
    salt: Bytes,
    config: PollConfig,
) -> mpsc::Receiver<Polled> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let floor = config.min_interval.max(PollConfig::FLOOR);
        let mut interval = floor;
        let mut last: Option<i64> = None;
        let mut polls = 0u64;
        loop {
            polls += 1;
            let r = mainline.get_mutable(pubkey, &salt, last).await;
            match r {
                Ok(g) if last.is_none_or(|s| g.seq > s) && g.sig.is_some() => {
                    let sig = g.sig.unwrap_or([0; 64]);
                    last = Some(g.seq);
                    interval = floor;
                    let item = WireItem {
                        k: pubkey,
                        salt: salt.clone(),
                        seq: g.seq,
                        v: g.v,
                        sig,
                    };
                    let polled = Polled {
                        item,
                        polls,
                        elapsed: g.elapsed,
                    };
                    if tx.send(polled).await.is_err() {
                        return;
                    }
                }
                Err(MainlineError::Dht(_)) if tx.is_closed() => return,
                _ => interval = config.next_interval(interval),
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = tx.closed() => return,
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_backs_off_within_bounds() {
        let c = PollConfig::default();
        let mut i = c.min_interval;
        let mut seen = vec![];
        for _ in 0..12 {
            i = c.next_interval(i);
            seen.push(i);
        }
        assert_eq!(seen[0], Duration::from_millis(1500));
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*seen.last().unwrap(), Duration::from_secs(30));
        let rude = PollConfig {
            min_interval: Duration::from_millis(10),
            ..Default::default()
        };
        assert_eq!(rude.next_interval(Duration::ZERO), PollConfig::FLOOR);
    }
}
