#!/usr/bin/env bash
# latency.sh — propagation latency of a 4 KiB edit between two `tandem serve` on 127.0.0.1
# (watcher-triggered, like syncthing_pair.sh edit mode with trigger=watch). Prints
# tandem_edit_latency n=7 edit_bytes=4096 median_s=… min_s=… max_s=… values_s=…
# Needs a release build (or TANDEM=). Runs in a private network namespace with only loopback
# when it can (TD_NETNS auto|1|0, as tandem_pair.sh). EDIT_N [7], EDIT_SIZE [4096].
set -euo pipefail
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
B=${TANDEM:-$(dirname "$SELF")/../../target/release/tandem}
[ -x "$B" ] || { echo "tandem binary $B not found: cargo build --release, or set TANDEM=" >&2; exit 1; }
B=$(realpath "$B"); export TANDEM=$B
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }
PY=$(python3 -c 'import sys; print(sys.executable)')
if [ "${_TDLAT_IN_NETNS:-0}" != 1 ] && [ "${TD_NETNS:-auto}" != 0 ]; then
  if [ "$(id -u)" = 0 ]; then UNSHARE=(unshare -n); else UNSHARE=(unshare -rn); fi
  if command -v unshare >/dev/null && "${UNSHARE[@]}" true 2>/dev/null; then
    export _TDLAT_IN_NETNS=1
    exec "${UNSHARE[@]}" -- bash "$SELF" "$@"
  elif [ "${TD_NETNS:-auto}" = 1 ]; then
    echo "TD_NETNS=1 but a network namespace could not be created" >&2; exit 1
  fi
fi
if [ "${_TDLAT_IN_NETNS:-0}" = 1 ]; then
  if command -v ip >/dev/null; then ip link set lo up; else ifconfig lo up; fi
fi
W=$(mktemp -d -t tdlat.XXXXXX); PA=; PB=
cleanup() {
  local rc=$?
  for p in $PA $PB; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $PA $PB; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
read -r PORT_A PORT_B < <("$PY" -c '
import socket
s = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
mkdir -p "$W/a/f" "$W/b/f"
"$B" --home "$W/a/h" init --listen "127.0.0.1:$PORT_A" >/dev/null 2>&1
"$B" --home "$W/b/h" init --listen "127.0.0.1:$PORT_B" >/dev/null 2>&1
IA=$("$B" --home "$W/a/h" id); IB=$("$B" --home "$W/b/h" id)
"$B" --home "$W/a/h" peer add "$IB" --addr "127.0.0.1:$PORT_B" 2>/dev/null
"$B" --home "$W/b/h" peer add "$IA" --addr "127.0.0.1:$PORT_A" 2>/dev/null
"$B" --home "$W/a/h" folder add f "$W/a/f" --share "$IB" 2>/dev/null
"$B" --home "$W/b/h" folder add f "$W/b/f" --share "$IA" 2>/dev/null
"$B" --home "$W/a/h" serve --log-level warn 2>"$W/a.log" & PA=$!
"$B" --home "$W/b/h" serve --log-level warn 2>"$W/b.log" & PB=$!
# both started (their control sockets answer "starting": false, see wait_ready.py), then
# connected and in sync with each other, so every timed edit goes between a connected, idle pair
"$PY" "$(dirname "$SELF")/wait_ready.py" "$W/a/h" 60 "$PA"
"$PY" "$(dirname "$SELF")/wait_ready.py" "$W/b/h" 60 "$PB"
paired=0
for _ in $(seq 1 300); do
  if "$B" --home "$W/a/h" status --check >/dev/null 2>&1 && "$B" --home "$W/b/h" status --check >/dev/null 2>&1; then
    paired=1; break
  fi
  sleep 0.2
done
[ "$paired" = 1 ] || { echo "the two daemons are not in sync after 60 s" >&2; exit 1; }
W=$W "$PY" - <<'PY'
import os, statistics, time
n = int(os.environ.get("EDIT_N", "7")); size = int(os.environ.get("EDIT_SIZE", "4096"))
src, dst = os.environ['W'] + '/a/f/edit.bin', os.environ['W'] + '/b/f/edit.bin'
vals = []
for i in range(n):
    data = os.urandom(size)
    t = time.monotonic()
    with open(src, 'wb') as f:
        f.write(data)
    while True:
        try:
            if open(dst, 'rb').read() == data:
                break
        except FileNotFoundError:
            pass
        if time.monotonic() - t > 120:
            raise SystemExit("edit did not propagate within 120 s")
        time.sleep(0.002)
    vals.append(time.monotonic() - t)
    time.sleep(0.5)
print("tandem_edit_latency n=%d edit_bytes=%d median_s=%.3f min_s=%.3f max_s=%.3f values_s=%s loadavg1=%s"
      % (n, size, statistics.median(vals), min(vals), max(vals), ",".join("%.3f" % v for v in vals),
         open("/proc/loadavg").read().split()[0]))
PY
