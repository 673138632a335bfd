//! Shared helpers for the example programs in `examples/examples/`.
