//! Dialing peers: one task per peer address keeps a connection open, reconnecting with
//! backoff. A peer given by host name is resolved again at every dial, so a laptop whose
//! address changed is found under its name.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn, Instrument};

use super::{serve, Shared};
use crate::Replica;

/// Where a dialing task connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// A fixed address.
    Addr(SocketAddr),
    /// `host:port`, looked up before every attempt.
    Name(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addr(addr) => write!(f, "{addr}"),
            Target::Name(name) => f.write_str(name),
        }
    }
}

/// Dials peers learned by peer exchange that have an address and no connection.
pub(super) fn dial_new_peers(shared: &Arc<Shared>, replica: &Replica) {
    let candidates: Vec<SocketAddr> = {
        let links = shared
            .links
            .lock()
            .map(|l| l.keys().copied().collect::<BTreeSet<_>>());
        let connected = links.unwrap_or_default();
        replica
            .peers()
            .filter(|p| !connected.contains(&p.info.id))
            .filter_map(|p| p.info.addr.as_deref()?.parse().ok())
            .collect()
    };
    for addr in candidates {
        dial_once(shared, addr);
    }
}

/// Starts dialing `addr` unless a task already does; returns whether it started one.
pub(super) fn dial_once(shared: &Arc<Shared>, addr: SocketAddr) -> bool {
    let fresh = shared
        .dialing
        .lock()
        .map(|mut d| d.insert(addr))
        .unwrap_or(false);
    if fresh {
        tokio::spawn(dial(shared.clone(), Target::Addr(addr)).in_current_span());
    }
    fresh
}

/// Keeps a connection to `target` open, reconnecting with backoff: doubled after every failed
/// or short-lived connection (up to a minute, jittered), back to the start after one that
/// lasted, or at once when the trust list gains an entry ([`Shared::redial`]). A peer that
/// refuses us (we are not on its trust list) is logged once, not at every retry.
pub(super) async fn dial(shared: Arc<Shared>, target: Target) {
    let mut stop = shared.stop.subscribe();
    let mut backoff = DIAL_BACKOFF_MIN;
    let mut told_refused = false;
    let mut told_unresolved = false;
    // Which of a name's addresses this attempt takes.
    let mut attempt = 0usize;
    loop {
        if *stop.borrow() {
            return;
        }
        // Registered before the attempt, so a trust change during it still wakes the wait.
        let redial = shared.redial.notified();
        tokio::pin!(redial);
        redial.as_mut().enable();
        let resolved = resolve(&shared, &target, attempt).await;
        attempt = attempt.wrapping_add(1);
        let failure = match resolved {
            Err(e) => {
                if !std::mem::replace(&mut told_unresolved, true) {
                    warn!(peer = %target, error = %e, "cannot resolve the peer's name (retrying with backoff)");
                }
                None
            }
            Ok(addr) => {
                told_unresolved = false;
                if let Ok(mut dialing) = shared.dialing.lock() {
                    dialing.insert(addr);
                }
                shared.dials.fetch_add(1, Ordering::Relaxed);
                match shared.endpoint.connect(addr, "crdt-node") {
                    Ok(connecting) => match connecting.await {
                        Ok(connection) => {
                            let started = Instant::now();
                            serve(shared.clone(), connection.clone(), Some(addr)).await;
                            let reason = connection.close_reason();
                            if started.elapsed() >= DIAL_STABLE && !is_refusal(reason.as_ref()) {
                                backoff = DIAL_BACKOFF_MIN;
                                told_refused = false;
                            }
                            reason
                        }
                        Err(e) => Some(e),
                    },
                    Err(e) => {
                        warn!(%addr, error = %e, "cannot connect");
                        None
                    }
                }
            }
        };
        if is_refusal(failure.as_ref()) {
            if !std::mem::replace(&mut told_refused, true) {
                warn!(peer = %target, "refused: the peer is not on this node's trust list, or this node not on the peer's (retrying with backoff)");
            }
        } else if let Some(e) = failure {
            debug!(peer = %target, error = %e, "connection ended");
        }
        // Jitter spreads the retries of many dialers.
        let wait = backoff / 2 + backoff.mul_f64(fastrand::f64() / 2.0);
        tokio::select! {
            _ = tokio::time::sleep(wait) => backoff = (backoff * 2).min(DIAL_BACKOFF_MAX),
            _ = &mut redial => {
                backoff = DIAL_BACKOFF_MIN;
                told_refused = false;
            }
            _ = stop.changed() => return,
        }
    }
}

/// The address to dial at attempt number `attempt`: `target`'s, or one its name resolves
/// to (see [`pick`]).
async fn resolve(shared: &Shared, target: &Target, attempt: usize) -> std::io::Result<SocketAddr> {
    let name = match target {
        Target::Addr(addr) => return Ok(*addr),
        Target::Name(name) => name,
    };
    let v4 = shared.endpoint.local_addr().is_ok_and(|a| a.is_ipv4());
    let found: Vec<SocketAddr> = tokio::net::lookup_host(name.as_str()).await?.collect();
    pick(&found, v4, attempt)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

/// Of the addresses a name resolved to, the one attempt number `attempt` dials: those in the
/// endpoint's address family (an IPv4 socket cannot reach an IPv6 address) if any, taken in
/// turn from one attempt to the next, so that a name whose first address is stale (a
/// laptop's old address still in the resolver, or one of its interfaces down) is still
/// reached at another.
fn pick(found: &[SocketAddr], v4: bool, attempt: usize) -> Option<SocketAddr> {
    let family: Vec<SocketAddr> = found
        .iter()
        .filter(|a| a.is_ipv4() == v4)
        .copied()
        .collect();
    let choices = if family.is_empty() { found } else { &family };
    let count = choices.len();
    (count > 0)
        .then(|| choices.get(attempt % count).copied())
        .flatten()
}

/// First wait before redialing.
const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest wait before redialing.
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A connection that lasted this long was a success: the next failure starts the backoff over.
const DIAL_STABLE: Duration = Duration::from_secs(5);

/// Whether a connection ended because TLS refused it (a QUIC crypto error: a TLS alert, such
/// as a certificate unknown to a trust list).
fn is_refusal(reason: Option<&quinn::ConnectionError>) -> bool {
    match reason {
        Some(quinn::ConnectionError::ConnectionClosed(close)) => {
            (0x100..0x200).contains(&u64::from(close.error_code))
        }
        Some(quinn::ConnectionError::TransportError(e)) => {
            (0x100..0x200).contains(&u64::from(e.code))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_attempt_takes_the_next_address_of_the_endpoints_family() {
        let addr = |text: &str| text.parse::<SocketAddr>().unwrap();
        let (stale, current) = (addr("192.0.2.1:4433"), addr("192.0.2.2:4433"));
        let v6 = addr("[2001:db8::1]:4433");
        let found = [v6, stale, current];
        let picked: Vec<_> = (0..4).filter_map(|n| pick(&found, true, n)).collect();
        assert_eq!(picked, [stale, current, stale, current]);
        // No address of its family: the others are tried all the same.
        assert_eq!(pick(&[v6], true, 3), Some(v6));
        assert_eq!(pick(&found, false, 7), Some(v6));
        assert_eq!(pick(&[], true, 0), None);
    }
}
