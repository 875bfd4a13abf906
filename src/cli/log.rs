//! `tandem log [--json] [--follow]`: recent sync events — what changed, from which device,
//! where a replaced or deleted file went, errors — read from the index (read-only, so it
//! works next to a running daemon). `--follow` keeps printing new events.

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::cli::local::{read_index, rfc3339};
use crate::home::Home;
use crate::store::Event;

/// `tandem log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Print JSON (an array; with --follow, one object per line).
    #[arg(long)]
    json: bool,
    /// Keep printing new events until interrupted.
    #[arg(long)]
    follow: bool,
    /// How many of the latest events to show first.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

/// One `log --json` entry (fields may be added, never renamed).
#[derive(Serialize)]
struct EventJson<'a> {
    id: u64,
    time: String,
    folder: &'a str,
    path: &'a str,
    kind: &'static str,
    device: Option<&'a str>,
    detail: &'a str,
}

fn event_json(id: u64, e: &Event) -> EventJson<'_> {
    EventJson {
        id,
        time: rfc3339(e.time_ns),
        folder: &e.folder,
        path: &e.path,
        kind: e.kind.as_str(),
        device: e.device.as_deref(),
        detail: &e.detail,
    }
}

pub(super) fn log(home: &Home, args: LogArgs) -> anyhow::Result<()> {
    if !home.index_path().exists() {
        if args.json && !args.follow {
            println!("[]");
        }
        if !args.follow {
            return Ok(());
        }
    }
    let mut last = 0;
    let mut first = true;
    loop {
        if home.index_path().exists() {
            let events =
                read_index(home)?.events(last, if first { args.limit } else { usize::MAX })?;
            if let Some((id, _)) = events.last() {
                last = *id;
            }
            print(&events, args.json, args.follow)?;
        }
        if !args.follow {
            return Ok(());
        }
        first = false;
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn print(events: &[(u64, Event)], json: bool, lines: bool) -> anyhow::Result<()> {
    if json && !lines {
        let rows: Vec<EventJson<'_>> = events.iter().map(|(id, e)| event_json(*id, e)).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for (id, e) in events {
        if json {
            println!("{}", serde_json::to_string(&event_json(*id, e))?);
            continue;
        }
        let by = e.device.as_deref().map(|d| format!(" (by {d})")).unwrap_or_default();
        println!(
            "{} {} {:<13} {}{by}: {}",
            rfc3339(e.time_ns),
            e.folder,
            e.kind.as_str(),
            e.path,
            e.detail
        );
    }
    Ok(())
}
