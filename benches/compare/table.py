#!/usr/bin/env python3
"""table.py RAW [--out FILE.md [--notes NOTES.md]] — the summary of benches/compare/run.sh.

RAW holds the key=value lines of tandem_pair.sh, latency.sh, rsync_pair.sh, syncthing_pair.sh
and the references cp_pair.sh (tool "cp") and rsync_pair.sh with --fsync (tool "rsync-fsync"),
each prefixed by run.sh with "@TOOL:CORPUS ", plus "@meta:KIND ..." lines (machine, corpora,
per-run load, 1-min load samples). A report's appendix is such a file, so a report can be
rebuilt from its own appendix.
Prints the ratio table (tandem / each peer, tandem / best peer of rsync and Syncthing; below 1 =
tandem better), the reference table for the initial sync (tandem / cp -a, tandem / (cp -a +
sync), tandem / rsync --fsync; only when the raw lines hold cp or rsync-fsync results) and
writes a markdown report: date, machine, load, the tables, what each row measures, and the raw
lines in an appendix. Standard library only.
"""
import argparse
import shlex
import statistics
import sys
from collections import defaultdict

CORPUS_ORDER = ["mixed", "small", "big", "tiny"]


def parse(path):
    meta = defaultdict(list)   # kind -> [dict]
    lines = defaultdict(list)  # (tool, corpus) -> [dict]
    raw = []
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if not line.startswith("@"):
            continue
        raw.append(line)
        tag, _, rest = line.partition(" ")
        try:
            toks = shlex.split(rest)
        except ValueError:
            toks = rest.split()
        d = {}
        for i, t in enumerate(toks):
            k, eq, v = t.partition("=")
            if i == 0:
                d["_name"] = k
            if eq:
                d[k] = v
        if tag.startswith("@meta:"):
            meta[tag[6:]].append(d)
        else:
            tool, _, corpus = tag[1:].partition(":")
            lines[(tool, corpus)].append(d)
    return meta, lines, raw


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


class Data:
    def __init__(self, lines):
        self.lines = lines

    def tandem(self, corpus, phase):
        for d in self.lines.get(("tandem", corpus), []):
            if d["_name"] == f"tandem_{phase}_s":
                return d
        return None

    def rsync(self, corpus):
        out = {}
        for d in self.lines.get(("rsync", corpus), []):
            out.update({k: v for k, v in d.items() if k != "_name"})
        return out or None

    def cp(self, corpus):
        for d in self.lines.get(("cp", corpus), []):
            if d["_name"] == "cp_initial_s":
                return d
        return None

    def rsync_fsync(self, corpus):
        out = {}
        for d in self.lines.get(("rsync-fsync", corpus), []):
            out.update({k: v for k, v in d.items() if k != "_name"})
        return out or None

    def syncthing(self, corpus, name, trigger=None):
        for d in self.lines.get(("syncthing", corpus), []):
            if d["_name"] == name and (trigger is None or d.get("trigger") == trigger):
                return d
        return None

    def latency(self):
        for d in self.lines.get(("tandem", "latency"), []):
            if d["_name"] == "tandem_edit_latency":
                return d
        return None


def fmt_s(v):
    if v is None:
        return "—"
    return f"{v:.3f} s" if v < 1 else f"{v:.2f} s" if v < 100 else f"{v:.0f} s"


def fmt_b(v):
    if v is None:
        return "—"
    if v >= 10 ** 6:
        return f"{v / 1e6:,.2f} MB"
    if v >= 10 ** 3:
        return f"{v / 1e3:,.1f} kB"
    return f"{v:.0f} B"


def ratio(t, p):
    if t is None or p is None or p == 0:
        return None
    return t / p


def fmt_r(r):
    if r is None:
        return "—"
    return f"{r:.3f}×" if r < 0.1 else f"{r:.2f}×"


def corpus_label(meta, corpus):
    for d in meta.get("corpus", []):
        if d.get("kind") == corpus:
            files, nbytes = int(d.get("files", 0)), int(d.get("bytes", 0))
            return f"{corpus} ({files:,} file{'' if files == 1 else 's'}, {nbytes / 2 ** 20:,.0f} MiB)"
    return corpus


def add(s, a, b):
    a, b = num(a), num(b)
    return None if a is None or b is None else a + b


def build_rows(meta, data, corpora):
    """rows: (label, kind 's'|'b', tandem, rsync, syncthing, note)"""
    rows = []
    # initial sync
    for c in corpora:
        t = data.tandem(c, "initial"); r = data.rsync(c); s = data.syncthing(c, "syncthing_initial_sync_s")
        rows.append((f"initial sync, {corpus_label(meta, c)}", "s",
                     num(t and t.get("tandem_initial_s")), num(r and r.get("rsync_initial_s")),
                     num(s and s.get("syncthing_initial_sync_s")), ""))
    # no-change resync
    for c in corpora:
        t = data.tandem(c, "noop"); r = data.rsync(c)
        if not t and not r:
            continue
        rows.append((f"no-change resync, {c}", "s", num(t and t.get("tandem_noop_s")),
                     num(r and r.get("rsync_noop_s")), None, "Syncthing: no such mode"))
        rows.append((f"no-change resync, {c}: all traffic, both directions", "b",
                     num(t and t.get("wire_bytes")),
                     add(None, r and r.get("rsync_noop_bytes_sent"), r and r.get("rsync_noop_bytes_received")),
                     None, "tandem: loopback bytes; rsync: sent + received"))
    # insert
    for c in [c for c in ("big", "mixed", "tiny") if c in corpora]:
        t = data.tandem(c, "insert"); r = data.rsync(c)
        s_scan = data.syncthing(c, "syncthing_insert_s", "scan")
        s_watch = data.syncthing(c, "syncthing_insert_s", "watch")
        if not t and not s_scan and not s_watch:
            continue
        size = (t and t.get("file_bytes")) or (r and r.get("insert_file_bytes_before"))
        what = f"1 MiB inserted mid-file, {c}" + (f" ({int(size) / 2 ** 20:,.0f} MiB file)" if size else "")
        rows.append((f"{what}: time", "s", num(t and t.get("tandem_insert_s")),
                     num(r and r.get("rsync_insert_s")), num(s_scan and s_scan.get("syncthing_insert_s")),
                     "Syncthing: trigger=scan"))
        rows.append((f"{what}: time, Syncthing via its watcher (10 s delay)", "s",
                     num(t and t.get("tandem_insert_s")), None,
                     num(s_watch and s_watch.get("syncthing_insert_s")), "Syncthing: trigger=watch"))
        note = "tandem: chunk payload; rsync: bytes sent; Syncthing: dst inBytesTotal"
        tn, fb, ib = num(t and t.get("network_bytes")), num(t and t.get("file_bytes")), num(t and t.get("insert_bytes"))
        if tn and fb and ib and tn > 10 * ib:
            note += (f"; **tandem re-sent {100 * tn / fb:.0f}% of the file**"
                     + (f" (reused locally: {fmt_b(num(t.get('reused_bytes')))})" if num(t.get("reused_bytes")) is not None else ""))
        rows.append((f"{what}: bytes to the destination", "b", tn,
                     num(r and r.get("rsync_insert_bytes_sent")), num(s_scan and s_scan.get("dst_in_bytes")), note))
        rows.append((f"{what}: all traffic, both directions", "b", num(t and t.get("wire_bytes")),
                     add(None, r and r.get("rsync_insert_bytes_sent"), r and r.get("rsync_insert_bytes_received")),
                     None, "tandem: loopback bytes; rsync: sent + received"))
    # small files modified
    for c in [c for c in ("small", "mixed", "tiny") if c in corpora]:
        t = data.tandem(c, "small_modify"); r = data.rsync(c)
        if not t and not r:
            continue
        n = (t and t.get("small_modify_count")) or (r and r.get("small_modify_count"))
        what = f"1% of small files ({n}) get a 64-byte edit, {c}"
        rows.append((f"{what}: time", "s", num(t and t.get("tandem_small_modify_s")),
                     num(r and r.get("rsync_small_modify_s")), None, "Syncthing: no such mode"))
        rows.append((f"{what}: bytes to the destination", "b", num(t and t.get("network_bytes")),
                     num(r and r.get("rsync_small_modify_bytes_sent")), None,
                     "tandem: chunk payload; rsync: bytes sent"))
        rows.append((f"{what}: all traffic, both directions", "b", num(t and t.get("wire_bytes")),
                     add(None, r and r.get("rsync_small_modify_bytes_sent"),
                         r and r.get("rsync_small_modify_bytes_received")),
                     None, "tandem: loopback bytes; rsync: sent + received"))
    # latency
    lat = data.latency()
    st_corpus = next((c for c in corpora if data.syncthing(c, "syncthing_edit_latency", "watch")), None)
    sw = data.syncthing(st_corpus, "syncthing_edit_latency", "watch") if st_corpus else None
    ss = data.syncthing(st_corpus, "syncthing_edit_latency", "scan") if st_corpus else None
    if lat or sw or ss:
        tl = num(lat and lat.get("median_s"))
        rows.append(("4 KiB edit propagation latency (median), Syncthing default watcher (10 s)", "s",
                     tl, None, num(sw and sw.get("median_s")), "rsync: not a daemon-to-daemon sync"))
        rows.append(("4 KiB edit propagation latency (median), Syncthing trigger=scan", "s",
                     tl, None, num(ss and ss.get("median_s")), "scan = REST call right after the write"))
    return rows


def ratio_table(rows):
    out = ["| row | tandem | rsync | Syncthing | tandem / rsync | tandem / Syncthing | tandem / best peer | note |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, kind, t, r, s, note in rows:
        f = fmt_s if kind == "s" else fmt_b
        peers = [p for p in (r, s) if p is not None and p > 0]
        best = min(peers) if peers else None
        out.append(f"| {label} | {f(t)} | {f(r)} | {f(s)} | {fmt_r(ratio(t, r))} | {fmt_r(ratio(t, s))} "
                   f"| {fmt_r(ratio(t, best))} | {note} |")
    return out


def reference_table(meta, data, corpora):
    """Initial sync against the two references (not peers): cp -a (+ sync) and rsync --fsync.
    Empty when the raw lines hold neither (runs before they existed)."""
    if not any(data.cp(c) or data.rsync_fsync(c) for c in corpora):
        return []
    out = ["| row | tandem | `cp -a` | `cp -a` + `sync` (sync alone) | rsync --fsync "
           "| tandem / `cp -a` | tandem / (`cp -a` + `sync`) | tandem / rsync --fsync "
           "| CPU s: tandem (serve + sync) / `cp -a` |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in corpora:
        t = data.tandem(c, "initial"); cp = data.cp(c); rf = data.rsync_fsync(c)
        if not cp and not rf:
            continue
        tv = num(t and t.get("tandem_initial_s"))
        cv, sv = num(cp and cp.get("cp_initial_s")), num(cp and cp.get("cp_sync_s"))
        dv = num(cp and cp.get("cp_durable_s"))
        if dv is None and cv is not None and sv is not None:
            dv = cv + sv
        rv = num(rf and rf.get("rsync_initial_s"))
        tc = add(None, t and t.get("src_cpu_s"), t and t.get("dst_cpu_s"))
        cc = num(cp and cp.get("cp_cpu_s"))
        durable = "—" if dv is None else f"{fmt_s(dv)} ({fmt_s(sv)})"
        cpu = ("—" if tc is None else f"{tc:.2f}") + " / " + ("—" if cc is None else f"{cc:.2f}")
        out.append(f"| initial sync, {corpus_label(meta, c)} | {fmt_s(tv)} | {fmt_s(cv)} | {durable} | {fmt_s(rv)} "
                   f"| {fmt_r(ratio(tv, cv))} | {fmt_r(ratio(tv, dv))} | {fmt_r(ratio(tv, rv))} | {cpu} |")
    return out


REFERENCE_DEFINITIONS = """* **`cp -a`** (reference, `cp_pair.sh`) — `cp -a SRC DST` on the same disk, into the same scratch
  DST as the other tools (absent before, removed after, same `sync` and pause before it); CPU s
  from /usr/bin/time. **`cp -a` + `sync`**: then `sync -f DST` (flushes DST's filesystem), timed
  on its own and shown in brackets: cp fsyncs nothing while tandem fsyncs every file, so this is
  the durable comparison. The issue's target for tandem's initial sync: within 2× of `cp -a`.
* **rsync --fsync** (reference) — rsync_pair.sh's initial scenario as in the rsync column, with
  `RSYNC_EXTRA=--fsync`: the daemon fsyncs every file it writes (rsync 3.2.7); run on a fresh
  scratch copy of the corpus, only the initial scenario's lines are kept.
* Neither reference enters the "best peer" ratio.
"""


def resource_table(meta, data, corpora):
    out = ["| row | tandem CPU s (serve + sync) | tandem peak RSS MiB (serve / sync) "
           "| Syncthing CPU s (src + dst) | Syncthing peak RSS MiB (src / dst) | CPU tandem / Syncthing |",
           "| --- | --- | --- | --- | --- | --- |"]

    def cpu(d, a="src_cpu_s", b="dst_cpu_s"):
        x, y = num(d and d.get(a)), num(d and d.get(b))
        if x is None or y is None:
            return None, "—"
        p = 1 if x + y >= 10 else 2
        return x + y, f"{x + y:.{p}f} ({x:.{p}f} + {y:.{p}f})"

    def rss(d):
        x, y = d and d.get("src_peak_rss_mib"), d and d.get("dst_peak_rss_mib")
        return "—" if x is None or y is None else f"{x} / {y}"

    for c in corpora:
        for phase, st in (("initial", data.syncthing(c, "syncthing_initial_sync_s")),
                          ("noop", None),
                          ("insert", data.syncthing(c, "syncthing_insert_s", "scan")),
                          ("small_modify", None)):
            t = data.tandem(c, phase)
            if not t and not st:
                continue
            (tc, ts), (sc, ss) = cpu(t), cpu(st)
            srss = rss(st) if phase == "initial" else ("— (whole-run peak in the initial row)" if st else "—")
            label = {"initial": "initial sync", "noop": "no-change resync", "insert": "1 MiB insert",
                     "small_modify": "1% small files edited"}[phase]
            out.append(f"| {label}, {c} | {ts} | {rss(t)} | {ss} | {srss} | {fmt_r(ratio(tc, sc))} |")
    return out


def load_summary(meta):
    d = (meta.get("load1") or [{}])[0]
    vals = [float(v) for v in d.get("values", "").split(",") if v]
    every = d.get("every_s", "?")
    if vals:
        return (f"min {min(vals):.2f}, median {statistics.median(vals):.2f}, max {max(vals):.2f} "
                f"({len(vals)} samples, every {every} s)")
    if "median" in d:  # a summary line instead of the samples
        return f"min {d.get('min')}, median {d.get('median')}, max {d.get('max')} ({d.get('n')} samples, every {every} s)"
    return None


DEFINITIONS = """\
* **initial sync** — DST empty. tandem: from starting `tandem serve` on SRC (its first scan hashes
  everything) until `tandem sync` on DST exits in sync. rsync: `rsync -a --delete SRC/
  rsync://127.0.0.1:PORT/mod/` to a daemon on loopback. Syncthing: from adding the folder on both
  instances (already connected) until DST reports everything in sync (includes SRC's scan).
* **no-change resync** — nothing changed. tandem: `tandem serve` restarted on SRC (startup rescan with
  its index) + `tandem sync` on DST (rescan, connect, index exchange). rsync: the same command again
  (size+mtime quick check). Syncthing has no equivalent in its script (it is continuous).
* **1 MiB inserted mid-file** — 1 MiB of random bytes inserted near the middle of the largest file
  (tandem and Syncthing: at size/2 + 1000, in place; rsync_pair.sh: at size/2, via a new file),
  then resync, timed as above (tandem includes SRC's startup rescan, which re-chunks the changed
  file, and DST's rescan). Syncthing trigger=scan: `POST /rest/db/scan` right after the write; trigger=watch:
  its inotify watcher with the default 10 s delay (the second insertion is into the already grown file).
* **1% of small files get a 64-byte edit** — rsync_pair.sh's definition, used verbatim by
  tandem_pair.sh: of the files ≤ 64 KiB sorted by path, every 100th from the first gets 64 random
  bytes overwritten in its middle and its mtime set 5 s ahead.
* **bytes to the destination** — tandem: the puller's chunk payload from `tandem sync`'s summary
  ("in sync: N bytes received from peers"), without protocol overhead; rsync: "Total bytes sent"
  by the sending client (file list, delta tokens, literal data); Syncthing: the destination's
  `inBytesTotal` for the connection (all BEP traffic incl. TLS and index updates).
* **all traffic, both directions** — tandem: every byte the loopback interface received during the
  phase in tandem_pair.sh's private network namespace (both directions, IP/UDP/QUIC headers,
  handshake, index exchange, acks); rsync: "Total bytes sent" + "Total bytes received" (application
  bytes, no TCP/IP headers).
* **edit propagation latency** — tandem (`latency.sh`): two `tandem serve` on an empty folder, a
  4 KiB file rewritten on one side, polled every 2 ms on the other until identical; median of 7.
  Syncthing (`syncthing_pair.sh` edit mode, on the mixed corpus, or tiny): a 4 KiB rewrite of an
  existing small file, polled every 5 ms; median of EDIT_N per trigger.
* **CPU s / peak RSS** — tandem: utime+stime and VmHWM of `tandem serve` (from /proc before it is
  stopped) and of `tandem sync` (/usr/bin/time), per phase. Syncthing: utime+stime delta of each
  instance over the phase; VmHWM is per process lifetime (initial rows only). rsync_pair.sh reports
  neither.
* Ratios are tandem / peer on the value shown: below 1× tandem is faster or sends less. "Best peer"
  is the lower of rsync and Syncthing where both were measured.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("raw")
    ap.add_argument("--out")
    ap.add_argument("--notes", help="markdown file whose text is added as a Notes section")
    a = ap.parse_args()
    meta, lines, raw = parse(a.raw)
    data = Data(lines)
    seen = {c for (_, c) in lines if c in CORPUS_ORDER} | {d.get("kind") for d in meta.get("corpus", [])}
    corpora = [c for c in CORPUS_ORDER if c in seen]
    run = (meta.get("run") or [{}])[0]
    end = (meta.get("run_end") or [{}])[0]
    rows = build_rows(meta, data, corpora)
    ratios = ratio_table(rows)
    references = reference_table(meta, data, corpora)
    resources = resource_table(meta, data, corpora)
    print("\n".join(ratios))
    if references:
        print()
        print("\n".join(references))
    print()
    print("\n".join(resources))

    if not a.out:
        return
    mem = int(run.get("mem_kib", 0)) / 2 ** 20
    lsum = load_summary(meta)
    failed = end.get("failed", "")
    md = [f"# tandem vs rsync vs Syncthing — {run.get('date', '?')}", "",
          "Produced by `benches/compare/run.sh` in one run; everything on 127.0.0.1 (each pair in its own "
          "network namespace where possible), one tool after the other on the same corpora.", "",
          "| item | value |", "| --- | --- |",
          f"| date (UTC) | {run.get('date', '?')} |",
          f"| machine | {run.get('nproc', '?')} CPUs ({run.get('cpu', '?')}), {mem:.1f} GiB RAM, kernel {run.get('kernel', '?')} |",
          f"| load average before / after | {run.get('loadavg_before', '?')} / {end.get('loadavg_after', '?')} (1, 5, 15 min) |",
          f"| 1-min load during the run | {lsum or '?'} |",
          f"| duration | {end.get('elapsed_s', '?')} s |",
          f"| versions | tandem {run.get('tandem', '?')} (release build), rsync {run.get('rsync', '?')}, Syncthing {run.get('syncthing', '?')}"
          + (f", cp (coreutils) {run['cp']}" if run.get("cp") else "") + " |",
          ]
    if run.get("fs_corpora") or run.get("fs_scratch"):
        md.append(f"| disk | corpora on {run.get('fs_corpora', '?')}, scratch DST on {run.get('fs_scratch', '?')} |")
    md += [
          f"| settings | pause between runs {run.get('pause_s', '?')} s after `sync`; Syncthing low priority: "
          f"{'off (nice 0, like the others)' if run.get('st_low_priority') == '0' else 'Syncthing default (nice 11)'}; "
          f"Syncthing edits per trigger {run.get('edit_n', '?')}; run.sh at nice {run.get('nice', '?')} |",
          "| corpora | " + "; ".join(
              f"{d.get('kind')}: {int(d.get('files', 0)):,} file{'' if d.get('files') == '1' else 's'}, "
              f"{int(d.get('bytes', 0)):,} B, "
              f"manifest {d.get('manifest_sha256', '')[:16]}{' (reused)' if d.get('reused') == '1' else ''}"
              for d in meta.get("corpus", [])) + " |",
          "| corpora pristine after the run | " + ", ".join(
              f"{d.get('kind')}: {'yes' if d.get('pristine') == '1' else 'NO'}" for d in meta.get("corpus_after", [])) + " |",
          ]
    if failed:
        md.append(f"| **failed runs** | {failed} |")
    md += ["", "## Ratios", "", "Below 1× tandem is faster or sends fewer bytes. This machine is shared: "
           "wall times swing with the load shown above; CPU seconds are steadier.", ""] + ratios
    if references:
        md += ["", "## Reference points for the initial sync: `cp -a` and rsync --fsync", "",
               "Not peers (they are not in the \"best peer\" ratio above): a plain local copy, with and "
               "without flushing it to disk, and rsync's daemon when it fsyncs every file as tandem does. "
               "The issue's target is an initial sync within 2× of `cp -a` of the same corpus on the same "
               "disk. Below 1× tandem is faster.", ""] + references
    if a.notes:
        md += ["", "## Notes", "", open(a.notes).read().strip()]
    md += ["", "## CPU seconds and peak RSS per row", ""] + resources
    md += ["", "## What each row measures", "", DEFINITIONS.rstrip(), ""]
    if references:
        md[-1:] = REFERENCE_DEFINITIONS.rstrip().split("\n") + [""]
    md += ["## Runs", "", "| tool | corpus | mode | exit | wall s | load1 before → after |", "| --- | --- | --- | --- | --- | --- |"]
    steps = meta.get("step", []); ends = meta.get("step_end", [])
    for s, e in zip(steps, ends):
        md.append(f"| {s.get('tool')} | {s.get('corpus')} | {s.get('mode')} | {e.get('rc')} | {e.get('elapsed_s')} "
                  f"| {s.get('loadavg1_before')} → {e.get('loadavg1_after')} |")
    md += ["", "## Appendix: raw key=value lines", "", "```"] + raw + ["```", ""]
    with open(a.out, "w") as f:
        f.write("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
