//! `tandem explain <FOLDER> <PATH>`: the answer to "why is this not in sync?" — every
//! replica's record of one path as this device knows it, the global version the rules
//! pick and the rule that picked it, and what this device still has to do.

use anyhow::Context;
use serde::Serialize;
use tandem_proto::model::{FileRecord, RelPath};
use tandem_proto::rules::{GlobalState, Need, Records, need};

use crate::cli::local::{read_index, rfc3339};
use crate::cli::print_json;
use crate::config::Config;
use crate::home::Home;

#[derive(Serialize)]
struct ExplainJson {
    folder: String,
    path: String,
    records: Vec<RecordJson>,
    global: Option<RecordJson>,
    rule: Option<&'static str>,
    concurrent: usize,
    need: &'static str,
    explanation: String,
}

#[derive(Serialize)]
struct RecordJson {
    replica: String,
    #[serde(rename = "type")]
    kind: &'static str,
    deleted: bool,
    size: u64,
    hash: String,
    mtime: String,
    mode: String,
    version: Vec<(String, u64)>,
    modified_by: String,
}

fn record_json(replica: String, r: &FileRecord) -> RecordJson {
    RecordJson {
        replica,
        kind: r.kind.as_str(),
        deleted: r.deleted,
        size: r.size,
        hash: r.hash.to_hex(),
        mtime: rfc3339(r.mtime_ns),
        mode: format!("{:04o}", r.mode),
        version: r.version.counters().iter().map(|c| (c.id.to_string(), c.value)).collect(),
        modified_by: r.modified_by.to_string(),
    }
}

pub(super) fn explain(home: &Home, folder: &str, path: &str, json: bool) -> anyhow::Result<()> {
    let config = Config::load(home)?;
    let cfg = config.folder(&super::setup::parse_folder_id(folder)?)?.clone();
    let path =
        RelPath::new(path.trim_end_matches('/')).with_context(|| format!("bad path {path:?}"))?;
    let index = read_index(home)?;
    let mut local = Records::new();
    local.extend(index.record(cfg.id.as_str(), &path)?.map(|l| (path.clone(), l.record)));
    let mut peers = Vec::new();
    for peer in &cfg.share {
        let mut records = Records::new();
        records.extend(
            index
                .peer_record(cfg.id.as_str(), &peer.to_string(), &path)?
                .map(|r| (path.clone(), r)),
        );
        peers.push((peer.to_string(), records));
    }
    let peer_refs: Vec<&Records> = peers.iter().map(|(_, r)| r).collect();
    let global = GlobalState::build(cfg.mode, &local, &peer_refs);
    let resolution = global.get(&path);
    let mut records: Vec<RecordJson> =
        local.get(&path).map(|r| record_json("this device".into(), r)).into_iter().collect();
    records.extend(
        peers.iter().filter_map(|(id, r)| r.get(&path).map(|r| record_json(id.clone(), r))),
    );
    let needs = need(cfg.mode, local.get(&path), resolution);
    let report = ExplainJson {
        folder: cfg.id.to_string(),
        path: path.to_string(),
        global: resolution.map(|g| record_json("global".into(), &g.record)),
        rule: resolution.map(|g| g.reason.as_str()),
        concurrent: resolution.map_or(0, |g| g.concurrent.len()),
        need: need_str(needs),
        explanation: sentence(needs, resolution.map(|g| g.reason.as_str())),
        records,
    };
    if json {
        return print_json(&report);
    }
    print_human(&report);
    Ok(())
}

fn need_str(n: Need) -> &'static str {
    match n {
        Need::InSync => "in-sync",
        Need::Ahead => "ahead",
        Need::Take => "take",
        Need::Adopt => "adopt",
        Need::KeepAsConflictCopy => "keep-as-conflict-copy",
        Need::LocalChange => "local-change",
        Need::OutOfSync => "out-of-sync",
    }
}

fn sentence(n: Need, rule: Option<&str>) -> String {
    let rule = rule.unwrap_or("no record anywhere");
    match n {
        Need::InSync => format!("this device has the global version ({rule})"),
        Need::Ahead => "this device has a newer version that peers still need".into(),
        Need::Take => format!("this device must take the global version ({rule})"),
        Need::Adopt => "the content here already is the global content; only metadata and version are adopted".into(),
        Need::KeepAsConflictCopy => format!("the version here lost a conflict ({rule}); it is kept as a conflict copy and the global version is taken"),
        Need::LocalChange => "a local change in a receive-only folder: not sent; `revert` would restore the global version".into(),
        Need::OutOfSync => "send-only folder: the global version differs and is not applied".into(),
    }
}

fn print_human(r: &ExplainJson) {
    println!("{} in folder {}: {}", r.path, r.folder, r.explanation);
    for rec in r.records.iter().chain(r.global.iter()) {
        let state = if rec.deleted {
            "deleted".to_string()
        } else {
            format!("{} {} bytes {}", rec.kind, rec.size, &rec.hash[..16])
        };
        let version: Vec<String> = rec.version.iter().map(|(d, c)| format!("{d}:{c}")).collect();
        println!(
            "  {:<58} {state}  mtime {}  by {}  version [{}]",
            rec.replica,
            rec.mtime,
            rec.modified_by,
            version.join(" ")
        );
    }
    if let Some(rule) = r.rule {
        println!(
            "  rule: {rule}{}",
            if r.concurrent > 1 {
                format!(" (among {} concurrent versions)", r.concurrent)
            } else {
                String::new()
            }
        );
    }
}
