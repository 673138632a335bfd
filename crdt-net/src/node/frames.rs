//! Messages on a QUIC connection: each a 4-byte little-endian length and the bytes, on one
//! unidirectional stream per direction. Shared by both drivers ([`Node`](super::Node) and
//! [`ClusterNode`](super::ClusterNode)).

use std::future::Future;

use crdt_core::ReplicaId;
use tokio::sync::mpsc;
use tracing::warn;

/// Reads the peer's messages, at most `max` bytes each, and hands each to `deliver`, which
/// answers `Err(reason)` to end the connection; returns why it ended. An oversized message
/// closes the connection before any of it is read into memory.
pub(super) async fn read_frames<F, Fut>(
    connection: &quinn::Connection,
    peer: ReplicaId,
    max: usize,
    mut deliver: F,
) -> String
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    loop {
        let mut stream = match connection.accept_uni().await {
            Ok(stream) => stream,
            Err(e) => return e.to_string(),
        };
        loop {
            let mut len = [0u8; 4];
            if let Err(e) = stream.read_exact(&mut len).await {
                if matches!(e, quinn::ReadExactError::FinishedEarly(0)) {
                    break; // The peer finished its stream cleanly.
                }
                return e.to_string();
            }
            let len = u32::from_le_bytes(len) as usize;
            if len > max {
                warn!(%peer, len, max, "oversized message; disconnecting the peer");
                connection.close(2u32.into(), b"message too large");
                return "oversized message".into();
            }
            let mut bytes = vec![0; len];
            if let Err(e) = stream.read_exact(&mut bytes).await {
                return e.to_string();
            }
            if let Err(reason) = deliver(bytes).await {
                return reason;
            }
        }
    }
}

/// Writes the queued messages to the peer until the queue closes or the connection fails;
/// `sent(len)` runs as each leaves the queue.
pub(super) async fn write_frames(
    connection: &quinn::Connection,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    mut sent: impl FnMut(u64),
) {
    let Ok(mut stream) = connection.open_uni().await else {
        return;
    };
    while let Some(payload) = outgoing.recv().await {
        sent(payload.len() as u64);
        let len = (payload.len() as u32).to_le_bytes();
        if stream.write_all(&len).await.is_err() || stream.write_all(&payload).await.is_err() {
            return;
        }
    }
}
