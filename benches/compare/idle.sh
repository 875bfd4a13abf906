#!/usr/bin/env bash
# idle.sh [FILES_DIR] — two `tandem serve` on 127.0.0.1 sharing a folder of many files (default:
# 100,000 small files generated under /tmp/idle100k), both pre-filled with the same files (so
# they are adopted without transfers). Once in sync: CPU seconds and RSS of each daemon over
# 60 idle seconds, then the propagation latency of one edit in that big folder.
# Prints `tandem_idle files=… cpu_pct=… rss_mib=… hwm_mib=…` per daemon, `tandem_index side=…
# when=… bytes=… per_file=…` for both homes (after adoption and idle, and again after the
# restart and the edits) and `tandem_big_folder_edit_latency …`. Needs a release build.
# IDLE_LOG_LEVEL sets the daemons' `--log-level` (default warn; e.g. `warn,tandem::store=debug`
# logs compactions); IDLE_KEEP=1 keeps the homes and logs (path on stderr).
set -euo pipefail
B=${TANDEM:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/tandem}
SRC=${1:-/tmp/idle100k}
if [ ! -d "$SRC" ]; then
  mkdir -p "$SRC"
  for d in $(seq -w 0 999); do
    mkdir -p "$SRC/d$d"
    for f in $(seq 0 99); do printf 'file %s/%s\n' "$d" "$f" > "$SRC/d$d/f$f.txt"; done
  done
fi
W=$(mktemp -d)
LOG=${IDLE_LOG_LEVEL:-warn}
cleanup() {
  kill ${PA:-} ${PB:-} 2>/dev/null || true
  if [ "${IDLE_KEEP:-0}" = 1 ]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
cp -a "$SRC" "$W/fa"; cp -a "$SRC" "$W/fb"
FILES=$(find "$W/fa" -type f | wc -l)
$B --home $W/a init --listen 127.0.0.1:24501 >/dev/null 2>&1
$B --home $W/b init --listen 127.0.0.1:24502 >/dev/null 2>&1
IA=$($B --home $W/a id); IB=$($B --home $W/b id)
$B --home $W/a peer add $IB --addr 127.0.0.1:24502 2>/dev/null
$B --home $W/b peer add $IA --addr 127.0.0.1:24501 2>/dev/null
$B --home $W/a folder add f $W/fa --share $IB 2>/dev/null
$B --home $W/b folder add f $W/fb --share $IA 2>/dev/null
$B --home $W/a serve --log-level "$LOG" 2>$W/a.log & PA=$!
$B --home $W/b serve --log-level "$LOG" 2>$W/b.log & PB=$!
# both daemons started: each answers its control socket saying it is no longer starting (its
# start-up scan is done; see wait_ready.py). Until a daemon answers at all, `status --check`
# judges the index alone, which after the restart below says "in sync" from the last run.
started() {
  python3 "$(dirname "$0")/wait_ready.py" $W/a 600 $PA && python3 "$(dirname "$0")/wait_ready.py" $W/b 600 $PB
}
in_sync() {
  $B --home $W/a status --check >/dev/null 2>&1 && $B --home $W/b status --check >/dev/null 2>&1
}
start=$(date +%s)
started
until in_sync; do
  sleep 1
  if [ $(( $(date +%s) - start )) -gt 600 ]; then echo "not in sync after 600 s" >&2; exit 1; fi
done
echo "tandem_converged files=$FILES seconds=$(( $(date +%s) - start ))"
sleep 30  # let the first rounds after convergence finish
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
kb() { awk -v k="$2" '$1==k":" {print $2}' /proc/$1/status; }
HZ=$(getconf CLK_TCK)
a0=$(ticks $PA); b0=$(ticks $PB); t0=$(date +%s.%N)
sleep 60
a1=$(ticks $PA); b1=$(ticks $PB); t1=$(date +%s.%N)
for side in a b; do
  pid=$([ $side = a ] && echo $PA || echo $PB)
  c0=$([ $side = a ] && echo $a0 || echo $b0); c1=$([ $side = a ] && echo $a1 || echo $b1)
  awk -v side=$side -v files=$FILES -v c=$((c1 - c0)) -v hz=$HZ -v t0=$t0 -v t1=$t1 \
      -v rss=$(kb $pid VmRSS) -v hwm=$(kb $pid VmHWM) 'BEGIN {
    printf "tandem_idle side=%s files=%d cpu_pct=%.3f rss_mib=%.1f hwm_mib=%.1f\n",
      side, files, 100 * c / hz / (t1 - t0), rss / 1024, hwm / 1024 }'
done
index_size() {
  for side in a b; do
    bytes=$(stat -c %s $W/$side/index.redb)
    echo "tandem_index side=$side when=$1 bytes=$bytes per_file=$(( bytes / FILES ))"
  done
}
index_size adopted
# steady state: restart both daemons on the synced folders, then measure idle again
kill -TERM $PA $PB; wait $PA $PB 2>/dev/null || true
$B --home $W/a serve --log-level "$LOG" 2>>$W/a.log & PA=$!
$B --home $W/b serve --log-level "$LOG" 2>>$W/b.log & PB=$!
started
until in_sync; do sleep 1; done
sleep 30
a0=$(ticks $PA); t0=$(date +%s.%N); sleep 60; a1=$(ticks $PA); t1=$(date +%s.%N)
awk -v files=$FILES -v c=$((a1 - a0)) -v hz=$HZ -v t0=$t0 -v t1=$t1 \
    -v rss=$(kb $PA VmRSS) -v hwm=$(kb $PA VmHWM) 'BEGIN {
  printf "tandem_idle_after_restart side=a files=%d cpu_pct=%.3f rss_mib=%.1f hwm_mib=%.1f\n",
    files, 100 * c / hz / (t1 - t0), rss / 1024, hwm / 1024 }'

W=$W python3 - <<'PY'
import os, time, statistics
vals = []
for i in range(7):
    data = os.urandom(4096)
    t = time.time()
    with open(os.environ['W'] + '/fa/d0500/edit.bin', 'wb') as f:
        f.write(data)
    while True:
        try:
            if open(os.environ['W'] + '/fb/d0500/edit.bin', 'rb').read() == data:
                break
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    vals.append(time.time() - t)
    time.sleep(0.5)
print("tandem_big_folder_edit_latency n=7 median_s=%.3f min_s=%.3f max_s=%.3f"
      % (statistics.median(vals), min(vals), max(vals)))
PY
index_size end
