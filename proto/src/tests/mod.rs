//! Crate-level tests: randomized multi-replica simulation and algebraic laws.

mod laws;
mod sim;
