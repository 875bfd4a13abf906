//! Crate-level tests: simulation, algebraic laws, golden bytes.

mod sim;
