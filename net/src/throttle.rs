//! Failed-authentication throttling per peer address, shared by every
//! server that checks tokens: after [`FailureThrottle::LIMIT`] failures in
//! a window, a peer's further attempts are refused (HTTP 429 with
//! `Retry-After`) until the window ends, without checking the token.
//! Memory is bounded: at most [`FailureThrottle::MAX_PEERS`] addresses are
//! tracked (the oldest window is forgotten first).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What happened to one failure, for the caller's audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Among the first failures of the window: record it as usual.
    Record,
    /// The failure that reached the limit: record one summary, the peer is
    /// now refused for `retry_after`.
    LimitReached {
        /// Failures in this window.
        failures: u32,
        /// How long the peer is refused.
        retry_after: Duration,
    },
    /// Counted only (a summary was or will be recorded).
    Counted,
}

/// A peer refused before its token was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Until the window ends.
    pub retry_after: Duration,
}

/// Per-peer failure counters.
#[derive(Debug)]
pub struct FailureThrottle {
    window: Duration,
    peers: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
    /// Attempts refused while throttled, not yet summarised.
    refused: u64,
}

/// Summary of a finished window with refusals, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// The peer.
    pub peer: IpAddr,
    /// Attempts refused unchecked while it was throttled.
    pub refused: u64,
}

impl Default for FailureThrottle {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl FailureThrottle {
    /// Failures a peer may have in one window.
    pub const LIMIT: u32 = 10;
    /// Failures recorded one by one before the limit's summary.
    pub const RECORDED: u32 = 3;
    /// Peers tracked at once.
    pub const MAX_PEERS: usize = 4096;

    /// A throttle with windows of `window`.
    pub fn new(window: Duration) -> Self {
        Self { window, peers: Mutex::new(HashMap::new()) }
    }

    /// Before checking a token from `peer`: refused while it is throttled.
    /// Also returns the summary of `peer`'s finished window, if it had
    /// refusals to report.
    pub fn check(&self, peer: IpAddr) -> (Result<(), Throttled>, Option<Finished>) {
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = peers.get_mut(&peer) else { return (Ok(()), None) };
        let age = now.duration_since(w.started);
        if age >= self.window {
            let finished = (w.refused > 0).then_some(Finished { peer, refused: w.refused });
            peers.remove(&peer);
            return (Ok(()), finished);
        }
        if w.failures >= Self::LIMIT {
            w.refused += 1;
            return (Err(Throttled { retry_after: self.window - age }), None);
        }
        (Ok(()), None)
    }

    /// A token from `peer` was refused.
    pub fn failed(&self, peer: IpAddr) -> Failure {
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if !peers.contains_key(&peer) && peers.len() >= Self::MAX_PEERS {
            let window = self.window;
            peers.retain(|_, w| now.duration_since(w.started) < window);
            if peers.len() >= Self::MAX_PEERS
                && let Some(oldest) = peers.iter().min_by_key(|(_, w)| w.started).map(|(ip, _)| *ip)
            {
                peers.remove(&oldest);
            }
        }
        let w = peers.entry(peer).or_insert(Window { started: now, failures: 0, refused: 0 });
        w.failures = w.failures.saturating_add(1);
        match w.failures {
            n if n <= Self::RECORDED => Failure::Record,
            n if n == Self::LIMIT => Failure::LimitReached {
                failures: n,
                retry_after: self.window.saturating_sub(now.duration_since(w.started)),
            },
            _ => Failure::Counted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_refused_after_the_limit_until_the_window_ends() {
        let t = FailureThrottle::new(Duration::from_millis(200));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let outcomes: Vec<Failure> = (0..FailureThrottle::LIMIT).map(|_| t.failed(a)).collect();
        assert_eq!(outcomes.iter().filter(|f| **f == Failure::Record).count(), 3);
        assert!(matches!(outcomes.last(), Some(Failure::LimitReached { failures: 10, .. })));
        for _ in 0..100 {
            assert!(t.check(a).0.is_err());
        }
        assert!(t.check(b).0.is_ok(), "another peer is not affected");
        std::thread::sleep(Duration::from_millis(250));
        let (ok, finished) = t.check(a);
        assert!(ok.is_ok());
        assert_eq!(finished, Some(Finished { peer: a, refused: 100 }));
    }

    #[test]
    fn tracked_peers_are_bounded() {
        let t = FailureThrottle::default();
        for i in 0..(FailureThrottle::MAX_PEERS as u32 + 100) {
            t.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert!(t.peers.lock().unwrap().len() <= FailureThrottle::MAX_PEERS);
    }
}
