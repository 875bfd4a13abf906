#!/usr/bin/env bash
# cp_pair.sh SRC DST — reference point for the initial sync: a plain local `cp -a` of the corpus.
#
# Usage:  benches/compare/cp_pair.sh SRC_DIR DST_DIR
#   SRC_DIR  the corpus (only read)
#   DST_DIR  absent or empty (an empty one is removed first so that `cp -a SRC DST` creates it
#            as the copy); it is left holding the copy, like the other pair scripts
#
# Times `cp -a SRC DST` (wall clock, plus user + system CPU seconds from /usr/bin/time), then
# `sync -f DST` right after it: cp makes nothing durable (the data may still sit in the page
# cache), while tandem fsyncs every file, so "cp -a, then sync" is the durable comparison.
# `sync -f` flushes the whole filesystem holding DST (syncfs), so dirty data that other
# processes wrote to that filesystem in the meantime is flushed (and timed) too; run.sh runs
# `sync` and pauses before every tool so that the copy starts with nothing dirty.
# Then checks the copy against SRC with `diff -r` (untimed).
#
# Output: one key=value line on stdout (diagnostics on stderr):
#   cp_initial_s=… cp_cpu_s=… cp_user_s=… cp_sys_s=… cp_sync_s=… cp_durable_s=… files=… bytes=… verify=ok|FAILED loadavg1=…
#   cp_initial_s  wall time of `cp -a SRC DST`
#   cp_cpu_s      its user + system CPU seconds (cp_user_s + cp_sys_s)
#   cp_sync_s     wall time of `sync -f DST` started right after the copy
#   cp_durable_s  cp_initial_s + cp_sync_s
# Exit status 1 when the copy differs from SRC.
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 SRC_DIR DST_DIR" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time not found (apt-get install time)" >&2; exit 1; }
SRC=$(cd "$1" && pwd)
DST=$2
if [ -e "$DST" ]; then
  [ -d "$DST" ] && [ -z "$(ls -A "$DST")" ] || { echo "cp_pair.sh: $DST exists and is not an empty folder" >&2; exit 1; }
  rmdir "$DST"
fi
mkdir -p "$(dirname "$DST")"
DST=$(cd "$(dirname "$DST")" && pwd)/$(basename "$DST")
TIMES=$(mktemp "${TMPDIR:-/tmp}/cp_pair.XXXXXX")
trap 'rm -f "$TIMES"' EXIT

t0=$EPOCHREALTIME
/usr/bin/time -f '%U %S' -o "$TIMES" cp -a "$SRC" "$DST"
t1=$EPOCHREALTIME
sync -f "$DST"
t2=$EPOCHREALTIME

read -r user sys <"$TIMES"
files=$(find "$DST" -type f | wc -l)
bytes=$(find "$DST" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
if diff -r "$SRC" "$DST" >/dev/null; then verify=ok; else verify=FAILED; fi
awk -v a="$t0" -v b="$t1" -v c="$t2" -v u="$user" -v s="$sys" -v f="$files" -v n="$bytes" -v v="$verify" \
    -v l="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
  printf "cp_initial_s=%.3f cp_cpu_s=%.2f cp_user_s=%.2f cp_sys_s=%.2f cp_sync_s=%.3f cp_durable_s=%.3f files=%d bytes=%d verify=%s loadavg1=%s\n",
         b - a, u + s, u, s, c - b, c - a, f, n, v, l }'
[ "$verify" = ok ] || { echo "cp_pair.sh: the copy in $DST differs from $SRC" >&2; exit 1; }
