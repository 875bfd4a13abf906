#!/usr/bin/env bash
# tandem_pair.sh SRC_DIR DST_DIR [MODE] — tandem's side of the side-by-side benchmarks, run
# the same way as ../shared/anchors/syncthing_pair.sh and rsync_pair.sh: two tandem devices on
# 127.0.0.1 (no discovery, no relays exist), SRC served by `tandem serve`, DST filled by
# `tandem sync`.
#
#   MODE initial (default)  time from start to DST holding everything (both sides scan first)
#        insert             initial, then insert INSERT_BYTES (1 MiB) of random bytes in the middle
#                           of the largest file on SRC and time the resync; bytes on the wire
#                           are the puller's verified network bytes
#
# Output: key=value lines, e.g.
#   tandem_initial_s=… bytes=… files=… network_bytes=… src_cpu_s=… dst_cpu_s=… src_peak_rss_mib=… dst_peak_rss_mib=… verify=ok
#   tandem_insert_s=… insert_bytes=1048576 network_bytes=… verify=ok
# Environment: TANDEM (binary, default target/release/tandem), KEEP_WORKDIR=1.
set -euo pipefail
SRC=$(realpath "$1"); DST=$(realpath -m "$2"); MODE=${3:-initial}
TANDEM=${TANDEM:-$(dirname "$0")/../../target/release/tandem}
TANDEM=$(realpath "$TANDEM")
[ -x "$TANDEM" ] || { echo "build first: cargo build --release" >&2; exit 1; }
mkdir -p "$DST"
WORK=$(mktemp -d)
SERVE_PID=
cleanup() {
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
  [ "${KEEP_WORKDIR:-0}" = 1 ] && echo "workdir: $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PA=$(port); PB=$(port)
ts() { "$TANDEM" --home "$WORK/src" "$@"; }
td() { "$TANDEM" --home "$WORK/dst" "$@"; }
ts init --name src --listen "127.0.0.1:$PA" >/dev/null 2>&1
td init --name dst --listen "127.0.0.1:$PB" >/dev/null 2>&1
IS=$(ts id); ID=$(td id)
ts peer add "$ID" --addr "127.0.0.1:$PB" 2>/dev/null; td peer add "$IS" --addr "127.0.0.1:$PA" 2>/dev/null
ts folder add bench "$SRC" --share "$ID" 2>/dev/null; td folder add bench "$DST" --share "$IS" 2>/dev/null
sed -i 's/rescan_secs = 3600/rescan_secs = 1/' "$WORK/src/config.toml"

start_src() {
  "$TANDEM" --home "$WORK/src" serve --log-level warn 2>>"$WORK/src.log" &
  SERVE_PID=$!
}
stop_src() { # reads CPU seconds and peak RSS of the server from /proc before stopping it
  local ticks
  ticks=$(getconf CLK_TCK)
  read -r SU SS < <(awk -v t="$ticks" '{print $14/t, $15/t}' "/proc/$SERVE_PID/stat")
  SM=$(awk '/VmHWM/ {print $2}' "/proc/$SERVE_PID/status")
  kill -TERM "$SERVE_PID"; wait "$SERVE_PID" || true; SERVE_PID=
}
sync_dst() { # prints elapsed seconds; leaves the summary in $WORK/dst.err
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S %M" -o "$WORK/dst.time" "$TANDEM" --home "$WORK/dst" sync --timeout 1800 --log-level warn 2>"$WORK/dst.err"
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1-$t0:.3f}')"
}
net_bytes() { grep -o 'in sync: [0-9]*' "$WORK/dst.err" | grep -o '[0-9]*$'; }
verify() { if diff -rq --exclude='.tandem*' "$SRC" "$DST" >/dev/null; then echo ok; else echo FAIL; fi; }
manifest() { python3 - "$1" <<'PY'
import os, sys
n = b = 0
for dp, dn, fn in os.walk(sys.argv[1]):
    dn[:] = [d for d in dn if not d.startswith('.tandem')]
    for f in fn:
        if f.startswith('.tandem'): continue
        n += 1; b += os.path.getsize(os.path.join(dp, f))
print(f"bytes={b} files={n}")
PY
}

start_src
sleep 0.3
T=$(sync_dst)
read -r DU DS DM < <(tail -n 1 "$WORK/dst.time")
stop_src
echo "tandem_initial_s=$T $(manifest "$SRC") network_bytes=$(net_bytes) src_cpu_s=$(python3 -c "print(round($SU+$SS,1))") dst_cpu_s=$(python3 -c "print(round($DU+$DS,1))") src_peak_rss_mib=$((SM/1024)) dst_peak_rss_mib=$((DM/1024)) verify=$(verify)"

if [ "$MODE" = insert ]; then
  BIG=$(find "$SRC" -type f -not -name '.tandem*' -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2-)
  cp -p "$BIG" "$WORK/backup"
  python3 - "$BIG" <<'PY'
import os, sys
p = sys.argv[1]; data = open(p, 'rb').read(); mid = len(data) // 2 + 1000
open(p, 'wb').write(data[:mid] + os.urandom(1 << 20) + data[mid:])
PY
  start_src
  sleep 1.5   # let the source rescan (every second here; no watcher yet) before timing
  T=$(sync_dst)
  stop_src
  echo "tandem_insert_s=$T insert_bytes=1048576 network_bytes=$(net_bytes) verify=$(verify)"
  cp -p "$WORK/backup" "$BIG"
fi
