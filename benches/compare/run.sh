#!/usr/bin/env bash
# run.sh — tandem side by side with rsync's daemon and Syncthing, in one run, loopback only,
# plus two reference points for the initial sync: `cp -a` and rsync's daemon with --fsync.
#
# Usage:  benches/compare/run.sh                    full run: corpora mixed, small, big (20-40 min
#                                                   on the 2-core project machine)
#         CORPORA=tiny benches/compare/run.sh       quick smoke run on the tiny corpus (~3 min)
#
# 1. builds the corpora with make_corpus.sh into CORPUS_DIR, or reuses them while
#    `make_corpus.sh manifest DIR` still matches the line saved when they were built;
# 2. per corpus, one after the other (after `sync` and a pause): tandem_pair.sh (tandem serve on
#    SRC, tandem sync on DST), rsync_pair.sh (rsync daemon on 127.0.0.1, on a scratch copy of the
#    corpus since it mutates its SRC) and syncthing_pair.sh (two Syncthing instances; discovery,
#    relays, NAT, usage and crash reporting off; private network namespace); then latency.sh;
#       corpus  tandem_pair.sh phases            syncthing_pair.sh mode
#       mixed   initial,noop,insert,small_modify all (initial + edit latency + 1 MiB insert)
#       small   initial,noop,small_modify        initial
#       big     initial,noop,insert              insert (initial + 1 MiB insert)
#       tiny    all                              all
#    rsync_pair.sh always runs its whole sequence (initial, noop, insert, small_modify, ...);
#    then the two references (not peers: they never enter the "best peer" ratio):
#    cp          cp_pair.sh: `cp -a SRC DST` into the same scratch DST on the same disk (wall
#                time and CPU s), then `sync -f DST` timed on its own (cp fsyncs nothing,
#                tandem fsyncs every file: cp -a + sync is the durable comparison);
#    rsync-fsync rsync_pair.sh with RSYNC_EXTRA=--fsync (the daemon fsyncs every file it
#                writes) and SKIP_CHECKSUM=1, on a fresh scratch copy; it cannot stop after
#                its initial scenario, so it runs its sequence up to the renames and run.sh
#                keeps only the initial scenario's lines (and the version, corpus size and
#                final check). Time cost per corpus: one more copy of the corpus plus a second
#                rsync sequence (slower than the first, since every write is fsynced);
#    every corpus is checked pristine again at the end;
# 3. table.py prints the table of ratios (tandem / each peer, tandem / best peer of rsync and
#    Syncthing), the reference table (initial sync: tandem / cp -a, tandem / (cp -a + sync),
#    tandem / rsync --fsync) and writes them as markdown with the machine, the load and the
#    raw key=value lines (OUT).
#
# Environment (defaults in brackets):
#   CORPORA          [mixed small big]  any of mixed small big tiny
#   CORPUS_DIR       [${TMPDIR:-/tmp}/tandem-compare-corpora]  kept after the run, for reuse
#   ANCHORS          [<repo>/../shared/anchors]  make_corpus.sh, rsync_pair.sh, syncthing_pair.sh
#   TANDEM           tandem binary [`cargo build --release` in the repo, target/release/tandem]
#   TOOLS            [tandem rsync syncthing cp rsync-fsync]
#   OUT              [benches/compare/results-<date>.md, or results-<date>-<corpora>.md when
#                    CORPORA is not the full set]
#   PAUSE_S          [10]  pause between two runs
#   ST_LOW_PRIORITY  [0]   Syncthing at nice 0 like the other tools (Syncthing's own default
#                    would be nice 11 plus idle I/O priority); set it empty for that default
#   EDIT_N           [5]   Syncthing edits per trigger (latency.sh makes 7)
#   KEEP_WORKDIR     [0]   1 = keep run.sh's scratch dir (raw output, per-run logs); the pair
#                          scripts always clean up their own
set -euo pipefail

usage() { awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; exit 2; }
[ $# -eq 0 ] || usage
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ANCHORS=$(cd "${ANCHORS:-$REPO/../shared/anchors}" 2>/dev/null && pwd) \
  || { echo "anchors folder not found: set ANCHORS= (needs make_corpus.sh, rsync_pair.sh, syncthing_pair.sh)" >&2; exit 1; }
read -r -a CORPORA <<<"${CORPORA:-mixed small big}"
read -r -a TOOLS <<<"${TOOLS:-tandem rsync syncthing cp rsync-fsync}"
CORPUS_DIR=${CORPUS_DIR:-${TMPDIR:-/tmp}/tandem-compare-corpora}
PAUSE_S=${PAUSE_S:-10}
export ST_LOW_PRIORITY=${ST_LOW_PRIORITY-0} EDIT_N=${EDIT_N:-5}
[ -n "$ST_LOW_PRIORITY" ] || unset ST_LOW_PRIORITY

die() { echo "run.sh: $*" >&2; exit 1; }
for c in "${CORPORA[@]}"; do case "$c" in mixed|small|big|tiny) ;; *) die "unknown corpus $c (mixed small big tiny)";; esac; done
for t in "${TOOLS[@]}"; do case "$t" in tandem|rsync|syncthing|cp|rsync-fsync) ;; *) die "unknown tool $t (tandem rsync syncthing cp rsync-fsync)";; esac; done
for f in make_corpus.sh rsync_pair.sh syncthing_pair.sh; do [ -f "$ANCHORS/$f" ] || die "$ANCHORS/$f missing"; done
for tool in python3 rsync syncthing diff find awk sed setsid; do
  command -v "$tool" >/dev/null || die "$tool not found (on Debian: apt-get install $tool)"
done
[ -x /usr/bin/time ] || die "/usr/bin/time not found (apt-get install time)"
PY=$(python3 -c 'import sys; print(sys.executable)')

# ---------------------------------------------------------------- tandem binary
if [ -z "${TANDEM:-}" ]; then
  command -v cargo >/dev/null || die "cargo not found: install Rust or set TANDEM=/path/to/tandem"
  echo "== cargo build --release" >&2
  (cd "$REPO" && cargo build --release >&2) || die "cargo build --release failed"
  TANDEM=$REPO/target/release/tandem
fi
[ -x "$TANDEM" ] || die "tandem binary $TANDEM not found"
TANDEM=$(realpath "$TANDEM"); export TANDEM

# ---------------------------------------------------------------- scratch, cleanup
RUN=$(mktemp -d -t tdcompare.XXXXXX)
mkdir -p "$RUN/logs"
RAW=$RUN/raw.txt; : >"$RAW"
CHILD=; SAMPLER=
cleanup() {
  local rc=$?
  trap '' INT TERM
  if [ -n "$CHILD" ]; then
    echo "run.sh: stopping the running benchmark (process group $CHILD)" >&2
    kill -TERM -- -"$CHILD" 2>/dev/null || kill -TERM "$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  if [ -n "$SAMPLER" ]; then kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; fi
  rm -rf "$RUN/dst" "$RUN/rsync_src"
  if [ "${KEEP_WORKDIR:-0}" = 1 ]; then echo "workdir kept: $RUN" >&2; else rm -rf "$RUN"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

meta() { echo "@meta:$1 ${*:2}" >>"$RAW"; }
load3() { cut -d' ' -f1-3 /proc/loadavg; }
kv_line() { grep -o 'files=[0-9]* dirs=[0-9]* bytes=[0-9]* manifest_sha256=[0-9a-f]*' <<<"$1" || true; }

# ---------------------------------------------------------------- corpora
mkdir -p "$CORPUS_DIR"
for kind in "${CORPORA[@]}"; do
  dir=$CORPUS_DIR/$kind saved=$CORPUS_DIR/$kind.manifest reused=0
  if [ -d "$dir" ] && [ -s "$saved" ]; then
    echo "== checking corpus $kind in $dir" >&2
    now=$(bash "$ANCHORS/make_corpus.sh" manifest "$dir")
    if [ -n "$(kv_line "$now")" ] && [ "$(kv_line "$now")" = "$(kv_line "$(cat "$saved")")" ]; then reused=1
    else echo "   corpus $kind changed or incomplete: rebuilding" >&2; fi
  fi
  if [ "$reused" = 0 ]; then
    echo "== building corpus $kind in $dir" >&2
    rm -rf "$dir" "$saved"
    bash "$ANCHORS/make_corpus.sh" "$kind" "$dir" | tail -n 1 >"$saved.tmp"
    [ -n "$(kv_line "$(cat "$saved.tmp")")" ] || die "make_corpus.sh $kind gave no manifest line"
    mv "$saved.tmp" "$saved"
  fi
  meta corpus "kind=$kind $(kv_line "$(cat "$saved")") reused=$reused"
done

# ---------------------------------------------------------------- machine, versions, load
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
if [ -z "${OUT:-}" ]; then
  suffix=; [ "${CORPORA[*]}" = "mixed small big" ] || suffix=-$(IFS=-; echo "${CORPORA[*]}")
  OUT=$HERE/results-$(date -u +%Y-%m-%d)$suffix.md
fi
GITREV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
meta run "date=$DATE nproc=$(nproc) mem_kib=$(awk '/MemTotal/ {print $2}' /proc/meminfo)" \
  "kernel=$(uname -r) cpu=\"$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)\"" \
  "tandem=\"$("$TANDEM" --version | awk '{print $2}') git $GITREV\" rsync=$(rsync --version | awk 'NR==1 {print $3}')" \
  "syncthing=$(syncthing --version | awk '{print $2}') cp=$(cp --version | awk 'NR==1 {print $NF}')" \
  "corpora=\"${CORPORA[*]}\" tools=\"${TOOLS[*]}\"" \
  "fs_corpora=$(df --output=source,fstype "$CORPUS_DIR" | awk 'NR==2 {print $1 ":" $2}')" \
  "fs_scratch=$(df --output=source,fstype "$RUN" | awk 'NR==2 {print $1 ":" $2}')" \
  "pause_s=$PAUSE_S st_low_priority=${ST_LOW_PRIORITY-default} edit_n=$EDIT_N nice=$(nice)" \
  "loadavg_before=\"$(load3)\""
T_START=$EPOCHREALTIME
( trap 'kill "$nap" 2>/dev/null; exit 0' TERM
  while :; do echo "$EPOCHREALTIME $(cut -d' ' -f1 /proc/loadavg)"; sleep 15 & nap=$!; wait "$nap"; done
) >"$RUN/load.txt" &
SAMPLER=$!

FAILED=()
# run_tool TOOL CORPUS MODE CMD...: runs CMD in the background in its own process group (so a
# signal reaches our trap, which stops that whole group and lets its script clean up), prefixes its key=value lines with @TOOL:CORPUS, logs stderr, records failures and goes on.
# KEEP_RE (extended regexp, default: every line with a '='): only the lines that match it are kept.
run_tool() {
  local tool=$1 corpus=$2 mode=$3 rc=0 t0; shift 3
  sync; sleep "$PAUSE_S"
  rm -rf "$RUN/dst"
  echo "== $tool on $corpus ($mode)  load $(load3)" >&2
  meta step "tool=$tool corpus=$corpus mode=$mode loadavg1_before=$(cut -d' ' -f1 /proc/loadavg)"
  t0=$EPOCHREALTIME
  KEEP_WORKDIR=0 setsid "$@" >"$RUN/out.txt" 2>"$RUN/logs/$tool-$corpus.log" &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=
  grep '=' "$RUN/out.txt" | grep -E "${KEEP_RE:-=}" | sed "s|^|@$tool:$corpus |" >>"$RAW" || true
  meta step_end "tool=$tool corpus=$corpus rc=$rc elapsed_s=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}') loadavg1_after=$(cut -d' ' -f1 /proc/loadavg)"
  if [ "$rc" != 0 ]; then
    FAILED+=("$tool:$corpus")
    { echo "!! $tool on $corpus FAILED (exit $rc); last lines of its log:"; tail -n 25 "$RUN/logs/$tool-$corpus.log"; } >&2
  fi
  rm -rf "$RUN/dst"
}

has_tool() { [[ " ${TOOLS[*]} " == *" $1 "* ]]; }
for kind in "${CORPORA[@]}"; do
  src=$CORPUS_DIR/$kind
  case "$kind" in
    mixed|tiny) tmode=all; smode=all ;;
    small) tmode=initial,noop,small_modify; smode=initial ;;
    big) tmode=initial,noop,insert; smode=insert ;;
  esac
  if has_tool tandem; then
    run_tool tandem "$kind" "$tmode" bash "$HERE/tandem_pair.sh" "$src" "$RUN/dst" "$tmode"
  fi
  if has_tool rsync; then
    echo "== copying $kind for rsync (rsync_pair.sh mutates its SRC)" >&2
    rm -rf "$RUN/rsync_src"; cp -a "$src" "$RUN/rsync_src"
    run_tool rsync "$kind" all bash "$ANCHORS/rsync_pair.sh" "$RUN/rsync_src" "$RUN/dst"
    rm -rf "$RUN/rsync_src"
  fi
  if has_tool syncthing; then
    run_tool syncthing "$kind" "$smode" bash "$ANCHORS/syncthing_pair.sh" "$src" "$RUN/dst" "$smode"
  fi
  # references for the initial sync (not peers)
  if has_tool cp; then
    run_tool cp "$kind" initial bash "$HERE/cp_pair.sh" "$src" "$RUN/dst"
  fi
  if has_tool rsync-fsync; then
    echo "== copying $kind for rsync --fsync (rsync_pair.sh mutates its SRC)" >&2
    rm -rf "$RUN/rsync_src"; cp -a "$src" "$RUN/rsync_src"
    KEEP_RE='^(rsync_version|rsync_protocol|corpus_files|corpus_bytes|rsync_initial_[a-z_]*|final_trees_identical)=' \
      run_tool rsync-fsync "$kind" all:initial-kept env RSYNC_EXTRA=--fsync SKIP_CHECKSUM=1 \
      bash "$ANCHORS/rsync_pair.sh" "$RUN/rsync_src" "$RUN/dst"
    rm -rf "$RUN/rsync_src"
  fi
done
if has_tool tandem; then
  run_tool tandem latency edit bash "$HERE/latency.sh"
fi

kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; SAMPLER=
echo "$EPOCHREALTIME $(cut -d' ' -f1 /proc/loadavg)" >>"$RUN/load.txt"
meta load1 "every_s=15 values=$(awk '{print $2}' "$RUN/load.txt" | paste -sd, -)"

# ---------------------------------------------------------------- corpora still pristine?
for kind in "${CORPORA[@]}"; do
  now=$(bash "$ANCHORS/make_corpus.sh" manifest "$CORPUS_DIR/$kind")
  if [ "$(kv_line "$now")" = "$(kv_line "$(cat "$CORPUS_DIR/$kind.manifest")")" ]; then pristine=1
  else
    pristine=0; FAILED+=("corpus:$kind")
    echo "!! corpus $kind is no longer pristine ($now); it will be rebuilt next run" >&2
    rm -f "$CORPUS_DIR/$kind.manifest"
  fi
  meta corpus_after "kind=$kind pristine=$pristine"
done
meta run_end "loadavg_after=\"$(load3)\" elapsed_s=$(awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.0f", b - a}')" \
  "failed=\"${FAILED[*]}\""

"$PY" "$HERE/table.py" "$RAW" --out "$OUT"
echo "== written $OUT" >&2
[ ${#FAILED[@]} -eq 0 ] || die "failed: ${FAILED[*]} (see the table's notes; KEEP_WORKDIR=1 keeps the logs)"
