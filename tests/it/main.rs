//! The one integration-test binary: real `tandem` processes on real temp folders.
//!
//! Each module is a user-visible area; `support` builds homes and folders and runs the
//! binary. Slow variants are gated by environment variables, never `#[ignore]`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod chaos;
mod cli;
mod conflicts;
mod control;
mod crash;
mod edits;
mod hostile;
mod hostile_fs;
mod scan;
mod status;
mod support;
mod sync;
mod tidy;
