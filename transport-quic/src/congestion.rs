//! Congestion control: Cubic on short paths, BBR on long ones.
//!
//! A loss-based controller (Cubic, NewReno) halves its window at every lost packet. On a long
//! path with random loss (a radio link, a congested peering point) that keeps the window small:
//! at 80 ms and 3% loss a 750 KiB message takes tens of seconds, longer than any request
//! deadline. BBR sizes its window to the bandwidth and round trip it measures and does not take
//! random loss for congestion, so the same message crosses in about a second. On a LAN or
//! loopback, where a round trip is well under a millisecond, BBR's small window costs throughput
//! (about a third of a 20-node loopback network's download rate), and loss is rare and cheap to
//! recover from. [`Congestion::Adaptive`] runs both controllers on every connection and lets
//! the path's lowest measured round trip pick which one's window is used.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;

/// A path whose lowest round trip is under this is local (a LAN, the same host).
pub const LOCAL_RTT: Duration = Duration::from_millis(5);

/// Which congestion controller the connections use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Congestion {
    /// Cubic while the path's lowest round trip is under [`LOCAL_RTT`], BBR beyond it
    /// (before the first acknowledgement the round trip is unknown, and BBR is used). The
    /// lowest round trip only falls, so a path switches at most once, to Cubic.
    #[default]
    Adaptive,
    /// Cubic (loss-based, quinn's default).
    Cubic,
    /// BBR (model-based: paces to the measured bandwidth; random loss does not shrink it).
    Bbr,
}

impl Congestion {
    pub(crate) fn factory(self) -> Arc<dyn ControllerFactory + Send + Sync> {
        match self {
            Self::Adaptive => Arc::new(AdaptiveFactory),
            Self::Cubic => Arc::new(CubicConfig::default()),
            Self::Bbr => Arc::new(BbrConfig::default()),
        }
    }
}

struct AdaptiveFactory;

impl ControllerFactory for AdaptiveFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Adaptive {
            cubic: Arc::new(CubicConfig::default()).build(now, current_mtu),
            bbr: Arc::new(BbrConfig::default()).build(now, current_mtu),
            local: false,
        })
    }
}

/// Both controllers see every event; the window is the local one's on a local path.
struct Adaptive {
    cubic: Box<dyn Controller>,
    bbr: Box<dyn Controller>,
    local: bool,
}

impl Adaptive {
    fn active(&self) -> &dyn Controller {
        if self.local {
            self.cubic.as_ref()
        } else {
            self.bbr.as_ref()
        }
    }
}

impl Controller for Adaptive {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.cubic.on_sent(now, bytes, last_packet_number);
        self.bbr.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.local = rtt.min() < LOCAL_RTT;
        self.cubic.on_ack(now, sent, bytes, app_limited, rtt);
        self.bbr.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.cubic
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        self.bbr
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.cubic
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        self.bbr
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.cubic.on_mtu_update(new_mtu);
        self.bbr.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.active().window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.active().metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            cubic: self.cubic.clone_box(),
            bbr: self.bbr.clone_box(),
            local: self.local,
        })
    }

    fn initial_window(&self) -> u64 {
        self.active().initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
