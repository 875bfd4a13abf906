#!/usr/bin/env bash
# scale.sh [N...] — how one device's costs grow with the number of files (issue 6's scale
# runs; not in CI). For each N (default 10000 100000 1000000): N small files (1,000 per
# directory) under /tmp/tandem-scale/N (kept for reuse), then, with a fresh home:
#   first scan (time, peak RSS), no-change rescan (time, peak RSS), index bytes per file,
#   and the RSS of `tandem serve` idle for 20 s after its start-up scan.
# Prints one `tandem_scale files=… …` line per N. Needs a release build.
set -euo pipefail
B=${TANDEM:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/tandem}
[ -x "$B" ] || { echo "build first: cargo build --release" >&2; exit 1; }
SIZES=${*:-10000 100000 1000000}
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
  $B --home "$W/h" init --listen 127.0.0.1:0 >/dev/null 2>&1
  echo '.complete' > "$SRC/.tandemignore"
  $B --home "$W/h" folder add f "$SRC" 2>/dev/null
  rm -rf "$SRC/.tandem"
  /usr/bin/time -o "$W/t1" -f "%e %M" $B --home "$W/h" scan >/dev/null 2>&1
  /usr/bin/time -o "$W/t2" -f "%e %M" $B --home "$W/h" scan >/dev/null 2>&1
  first=$(tail -1 "$W/t1"); again=$(tail -1 "$W/t2")
  bytes=$(stat -c %s "$W/h/index.redb")
  $B --home "$W/h" serve --log-level warn 2>/dev/null & P=$!
  until [ -S "$W/h/control.sock" ]; do sleep 0.2; done
  sleep 20
  rss=$(awk '/VmRSS/ {print $2}' /proc/$P/status); hwm=$(awk '/VmHWM/ {print $2}' /proc/$P/status)
  kill $P; wait $P 2>/dev/null || true
  echo "tandem_scale files=$N first_scan_s=${first% *} first_scan_rss_mib=$(( ${first#* } / 1024 )) rescan_s=${again% *} rescan_rss_mib=$(( ${again#* } / 1024 )) index_bytes_per_file=$(( bytes / N )) serve_idle_rss_mib=$(( rss / 1024 )) serve_hwm_mib=$(( hwm / 1024 ))"
  rm -rf "$W" "$SRC/.tandem" "$SRC/.tandemignore"
done
