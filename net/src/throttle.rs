//! Failed-authentication throttling per peer address, shared by every
//! server that checks tokens: after [`FailureThrottle::LIMIT`] failures in
//! a window, a peer's further attempts are refused (HTTP 429 with
//! `Retry-After`) until the window ends, without checking the token.
//! IPv6 peers are counted per /64 (one host usually holds a whole /64, so
//! per-address counting would let it rotate addresses). Memory is bounded:
//! at most [`FailureThrottle::MAX_PEERS`] peers are tracked; while every
//! tracked window is still open, further peers share one window, so that
//! spraying addresses neither evicts a throttled peer nor goes uncounted.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
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
    peers: Mutex<HashMap<Peer, Window>>,
}

/// What failures are counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Peer {
    /// An IPv4 address, or an IPv6 /64 (the address with its low 64 bits zero).
    Net(IpAddr),
    /// Every peer that arrived while the table was full of open windows.
    Overflow,
}

impl Peer {
    fn of(ip: IpAddr) -> Peer {
        match ip {
            IpAddr::V4(_) => Peer::Net(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Peer::Net(IpAddr::V4(v4)),
                None if v6.is_loopback() => Peer::Net(ip),
                None => {
                    let s = v6.segments();
                    Peer::Net(IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)))
                }
            },
        }
    }

    fn describe(self) -> String {
        match self {
            Peer::Net(ip @ IpAddr::V6(v6)) if !v6.is_loopback() => format!("{ip}/64"),
            Peer::Net(ip) => ip.to_string(),
            Peer::Overflow => format!("peers beyond the {} tracked", FailureThrottle::MAX_PEERS),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
    /// Attempts refused while throttled, not yet summarised.
    refused: u64,
}

/// Summary of a finished window with refusals, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The peer: an address, an IPv6 /64, or the shared overflow window.
    pub peer: String,
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
        let peer = self.slot(&mut peers, peer, now);
        let Some(w) = peers.get_mut(&peer) else { return (Ok(()), None) };
        let age = now.duration_since(w.started);
        if age >= self.window {
            let finished = (w.refused > 0).then(|| Finished { peer: peer.describe(), refused: w.refused });
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
        let peer = self.slot(&mut peers, peer, now);
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

impl FailureThrottle {
    /// Where `ip`'s failures count: its own entry if tracked or if there is
    /// room (after dropping closed windows), else the shared overflow one.
    fn slot(&self, peers: &mut HashMap<Peer, Window>, ip: IpAddr, now: Instant) -> Peer {
        let peer = Peer::of(ip);
        if peers.contains_key(&peer) || peers.len() < Self::MAX_PEERS {
            return peer;
        }
        let window = self.window;
        peers.retain(|_, w| now.duration_since(w.started) < window);
        if peers.len() < Self::MAX_PEERS { peer } else { Peer::Overflow }
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
        assert_eq!(finished, Some(Finished { peer: "10.0.0.1".into(), refused: 100 }));
    }

    #[test]
    fn tracked_peers_are_bounded() {
        let t = FailureThrottle::default();
        for i in 0..(FailureThrottle::MAX_PEERS as u32 + 100) {
            t.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert!(t.peers.lock().unwrap().len() <= FailureThrottle::MAX_PEERS + 1);
    }

    #[test]
    fn an_ipv6_host_rotating_addresses_in_its_64_is_one_peer() {
        let t = FailureThrottle::default();
        for i in 0..FailureThrottle::LIMIT {
            t.failed(format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap());
        }
        assert!(t.check("2001:db8:1:2:ffff::9".parse().unwrap()).0.is_err(), "the same /64");
        assert!(t.check("2001:db8:1:3::1".parse().unwrap()).0.is_ok(), "another /64");
        // An IPv4-mapped address is its IPv4 peer.
        for _ in 0..FailureThrottle::LIMIT {
            t.failed("192.0.2.7".parse().unwrap());
        }
        assert!(t.check("::ffff:192.0.2.7".parse().unwrap()).0.is_err());
    }

    #[test]
    fn spraying_addresses_does_not_evict_a_throttled_peer() {
        let t = FailureThrottle::default();
        let attacker: IpAddr = "10.9.9.9".parse().unwrap();
        for _ in 0..FailureThrottle::LIMIT {
            t.failed(attacker);
        }
        // The attacker fills the table from other addresses, hoping to push
        // its own throttled window out.
        for i in 0..(FailureThrottle::MAX_PEERS as u32 * 2) {
            t.failed(IpAddr::from((0x0b00_0000 + i).to_be_bytes()));
        }
        assert!(t.check(attacker).0.is_err(), "still throttled");
        // The sprayed addresses beyond the table share one window: throttled too.
        assert!(t.check("12.0.0.1".parse().unwrap()).0.is_err());
    }
}
