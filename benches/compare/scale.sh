#!/usr/bin/env bash
# scale.sh [N...] — how one device's costs grow with the number of files (issue 6's scale
# runs; not in CI). For each N (default 10000 100000 1000000): N small files (1,000 per
# directory) under /tmp/tandem-scale/N (kept for reuse), then, with a fresh home:
#   first scan (time, peak RSS), no-change rescan (time, peak RSS), index bytes per file,
#   and the RSS of `tandem serve` idle for 20 s after its start-up scan.
# Prints one `tandem_scale files=… …` line per N. Needs a release build.
#
# With SCALE_PEER=1, each N then also syncs with a second device: A (the scanned home) runs
# `tandem serve`, B (a fresh home with an empty folder) runs `tandem sync` until it holds every
# file, then both serve until `status --check` says each is in sync with the other. Prints
# `tandem_scale_peer files=… sync_s=… a_index_bytes_per_file=… b_index_bytes_per_file=…`: each
# index then holds its local records and the other device's records. Ports SCALE_PORT and
# SCALE_PORT+1 (default 24611) on 127.0.0.1. SCALE_KEEP=1 keeps the homes (path on stderr).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
B=${TANDEM:-$HERE/../../target/release/tandem}
[ -x "$B" ] || { echo "build first: cargo build --release" >&2; exit 1; }
SIZES=${*:-10000 100000 1000000}
PEER=${SCALE_PEER:-0}
PA_PORT=${SCALE_PORT:-24611}; PB_PORT=$((PA_PORT + 1))
LISTEN=127.0.0.1:0
[ "$PEER" = 1 ] && LISTEN=127.0.0.1:$PA_PORT
for N in $SIZES; do
  SRC=/tmp/tandem-scale/$N
  if [ ! -f "$SRC/.complete" ]; then
    rm -rf "$SRC"; mkdir -p "$SRC"
    python3 - "$SRC" "$N" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%04d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%07d.txt" % i), "w") as f:
        f.write("file %d\n" % i)
PY
    touch "$SRC/.complete"
  fi
  W=$(mktemp -d)
  $B --home "$W/h" init --listen $LISTEN >/dev/null 2>&1
  echo '.complete' > "$SRC/.tandemignore"
  $B --home "$W/h" folder add f "$SRC" 2>/dev/null
  rm -rf "$SRC/.tandem"
  /usr/bin/time -o "$W/t1" -f "%e %M" $B --home "$W/h" scan >/dev/null 2>&1
  /usr/bin/time -o "$W/t2" -f "%e %M" $B --home "$W/h" scan >/dev/null 2>&1
  first=$(tail -1 "$W/t1"); again=$(tail -1 "$W/t2")
  bytes=$(stat -c %s "$W/h/index.redb")
  $B --home "$W/h" serve --log-level warn 2>/dev/null & P=$!
  # started: its control socket answers "starting": false (start-up scan done; wait_ready.py)
  python3 "$HERE/wait_ready.py" "$W/h" 7200 $P
  sleep 20
  rss=$(awk '/VmRSS/ {print $2}' /proc/$P/status); hwm=$(awk '/VmHWM/ {print $2}' /proc/$P/status)
  kill $P; wait $P 2>/dev/null || true
  echo "tandem_scale files=$N first_scan_s=${first% *} first_scan_rss_mib=$(( ${first#* } / 1024 )) rescan_s=${again% *} rescan_rss_mib=$(( ${again#* } / 1024 )) index_bytes_per_file=$(( bytes / N )) serve_idle_rss_mib=$(( rss / 1024 )) serve_hwm_mib=$(( hwm / 1024 ))"
  if [ "$PEER" = 1 ]; then
    mkdir "$W/fb"
    $B --home "$W/b" init --listen 127.0.0.1:$PB_PORT >/dev/null 2>&1
    IA=$($B --home "$W/h" id); IB=$($B --home "$W/b" id)
    $B --home "$W/h" peer add "$IB" --addr 127.0.0.1:$PB_PORT 2>/dev/null
    $B --home "$W/b" peer add "$IA" --addr 127.0.0.1:$PA_PORT 2>/dev/null
    $B --home "$W/h" folder share f "$IB" 2>/dev/null
    $B --home "$W/b" folder add f "$W/fb" --share "$IA" 2>/dev/null
    $B --home "$W/h" serve --log-level warn 2>"$W/a.log" & P=$!
    python3 "$HERE/wait_ready.py" "$W/h" 7200 $P
    t0=$(date +%s.%N)
    $B --home "$W/b" sync --timeout 7200 --log-level warn >/dev/null 2>"$W/b.log"
    sync_s=$(awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN {printf "%.1f", t1 - t0}')
    $B --home "$W/b" serve --log-level warn 2>>"$W/b.log" & PB=$!
    until $B --home "$W/h" status --check >/dev/null 2>&1 && $B --home "$W/b" status --check >/dev/null 2>&1; do sleep 1; done
    kill $P $PB; wait $P $PB 2>/dev/null || true
    got=$(find "$W/fb" -path "$W/fb/.tandem" -prune -o -type f -name 'f*.txt' -print | wc -l)
    echo "tandem_scale_peer files=$N received=$got sync_s=$sync_s a_index_bytes_per_file=$(( $(stat -c %s "$W/h/index.redb") / N )) b_index_bytes_per_file=$(( $(stat -c %s "$W/b/index.redb") / N ))"
  fi
  if [ "${SCALE_KEEP:-0}" = 1 ]; then echo "kept $W" >&2; else rm -rf "$W"; fi
  rm -rf "$SRC/.tandem" "$SRC/.tandemignore"
done
