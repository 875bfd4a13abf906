//! Crate-level tests: simulation, algebraic laws, golden bytes.
