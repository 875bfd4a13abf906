//! The one integration-test binary: real `tandem` processes on real temp folders.
//!
//! Each module is a user-visible area; `support` builds homes and folders and runs the
//! binary. Slow variants are gated by environment variables, never `#[ignore]`.

mod cli;
mod scan;
mod support;
