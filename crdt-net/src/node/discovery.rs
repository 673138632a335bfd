//! LAN discovery by mDNS (feature `mdns`): each node announces `_crdt-node._udp.local.` with its
//! id, browses for the others, and dials those on its trust list. Where multicast does not work,
//! the daemon fails to start or finds nothing, and the node goes on with its static peers and
//! peer exchange.

use std::net::SocketAddr;
use std::sync::Arc;

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use tracing::{debug, info, warn, Instrument};

use super::dial::dial_once;
use super::{parse_node_id, Shared};

const SERVICE: &str = "_crdt-node._udp.local.";

/// Announces this node on `port` and dials trusted nodes as they are found. Returns the daemon
/// (to shut down with the node), or `None` where mDNS is unavailable.
pub(super) fn start(shared: &Arc<Shared>, port: u16) -> Option<ServiceDaemon> {
    let daemon = match ServiceDaemon::new() {
        Ok(daemon) => daemon,
        Err(e) => {
            warn!(error = %e, "mDNS unavailable; using static peers only");
            return None;
        }
    };
    let id = shared.id.to_string();
    let host = format!("{id}.local.");
    let properties = [("id", id.as_str())];
    match ServiceInfo::new(SERVICE, &id, &host, "", port, &properties[..]) {
        Ok(info) => {
            if let Err(e) = daemon.register(info.enable_addr_auto()) {
                warn!(error = %e, "cannot announce by mDNS");
            }
        }
        Err(e) => warn!(error = %e, "cannot describe this node for mDNS"),
    }
    let events = match daemon.browse(SERVICE) {
        Ok(events) => events,
        Err(e) => {
            warn!(error = %e, "cannot browse by mDNS");
            return Some(daemon);
        }
    };
    let shared = shared.clone();
    tokio::spawn(
        async move {
            while let Ok(event) = events.recv_async().await {
                let ServiceEvent::ServiceResolved(found) = event else {
                    continue;
                };
                let Some(Ok(peer)) = found.get_property_val_str("id").map(parse_node_id) else {
                    continue;
                };
                if peer == shared.id || !shared.trust.contains(peer) {
                    debug!(%peer, "found by mDNS, not trusted or ourselves");
                    continue;
                }
                for ip in found.get_addresses_v4() {
                    let addr = SocketAddr::from((ip, found.port));
                    if dial_once(&shared, addr) {
                        info!(%peer, %addr, "found by mDNS");
                    }
                }
            }
        }
        .in_current_span(),
    );
    Some(daemon)
}
