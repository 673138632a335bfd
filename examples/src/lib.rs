//! The parts of `crdt-node` (the binary in `src/bin/crdt-node.rs`): its command line, its
//! configuration, the requests it serves and the control socket a running node serves them
//! on.
//!
//! A running node answers requests from two places: the prompt on its stdin and the control
//! socket in its data directory, which `crdt-node add cart milk` and the other control
//! commands use. Both parse into one [`request::Request`], run by [`execute::execute`].

pub mod args;
pub mod config;
pub mod control;
pub mod execute;
pub mod prompt;
pub mod request;
