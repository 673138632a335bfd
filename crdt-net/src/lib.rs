//! Anti-entropy replication of crdt-core objects.
