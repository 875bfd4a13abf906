//! tandem: the IO shell around `tandem-proto`.
//!
//! Modules in reading order, each depending only on the ones before it:
//! [`home`] (where state lives), [`config`] (validated `config.toml`), [`identity`] (key,
//! certificate, device id), [`store`] (the redb index), [`scan`] (walk, stat fast path,
//! chunk+hash), and [`cli`] (the commands). The decisions — what wins, what to do — are made
//! in `tandem_proto::rules`; this crate only carries them out.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod home;
pub mod identity;
pub mod net;
pub mod scan;
pub mod store;
pub mod sync;
