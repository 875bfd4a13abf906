//! tandem-proto: the contract two tandem peers share, and the brain that decides what to do.
//!
//! Everything here is deterministic and free of IO: no async runtime, no filesystem, no
//! sockets, no clock and no OS randomness (`proto/clippy.toml` bans the entry points). Time
//! is always an argument. That is what lets the rules be tested by randomized multi-replica
//! simulation over thousands of seeds, and what lets a second implementation agree with us.
//!
//! Reading order: [`model`] (the values every peer shares), [`rules`] (what wins and what to
//! do), [`codec`] (the single owner of the byte encoding).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod check;
pub mod codec;
pub mod model;
pub mod rules;
pub mod wire;

#[cfg(test)]
mod tests;
