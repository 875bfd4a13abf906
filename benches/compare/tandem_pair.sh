#!/usr/bin/env bash
# tandem_pair.sh SRC_DIR DST_DIR [MODE] — tandem's side of the side-by-side benchmarks, run
# the same way as ../shared/anchors/syncthing_pair.sh and rsync_pair.sh: two tandem devices on
# 127.0.0.1 (no discovery, no relays exist), SRC served by `tandem serve`, DST filled by
# `tandem sync`.
#
#   MODE  a comma-separated list of phases, run in this order; initial always runs first:
#         initial (default)  DST (empty) receives everything
#         noop               nothing changed: resync
#         insert             insert INSERT_BYTES (1 MiB) of random bytes at size/2 + 1000 of the
#                            largest file on SRC (in place, like syncthing_pair.sh), then resync
#         small_modify       rsync_pair.sh's definition: of the files <= SMALL_MAX bytes, sorted
#                            by path (C locale), every (100/PCT)-th from the first gets 64 random
#                            bytes overwritten at size/2 - 32 (at 0 if size <= 64) and its mtime
#                            set to now + 5 s; then resync
#         all                initial,noop,insert,small_modify
#
# Every phase is timed the same way: the clock starts, `tandem serve` starts on SRC (its startup
# scan: a full scan the first time, a rescan with the index afterwards), the script waits until
# the server has started (wait_ready.py: its control socket answers a status request with
# "starting": false, i.e. the scan is done and it accepts peers; the socket itself exists from
# the server's first moments, so its existence is no longer the signal), then `tandem sync` runs on DST (scan of DST, connect, index exchange, pull) and the clock stops
# when it exits in sync. The server is stopped after every phase, which gives per-phase CPU
# seconds and peak RSS of both processes. SRC files changed by insert/small_modify are backed up
# first and restored on exit (after the server stopped), so the corpus stays pristine.
#
# Output: one key=value line per phase, e.g.
#   tandem_initial_s=… src_scan_s=… sync_s=… bytes=… files=… network_bytes=… wire_bytes=…
#       src_cpu_s=… dst_cpu_s=… src_peak_rss_mib=… dst_peak_rss_mib=… verify=ok …
#   tandem_noop_s=…  tandem_insert_s=… insert_bytes=1048576 file_bytes=…
#   tandem_small_modify_s=… small_modify_count=… small_files=…
# network_bytes = the puller's chunk payload from `tandem sync`'s summary ("in sync: N bytes
# received from peers"), reused_bytes = its "M bytes reused locally"; wire_bytes = every byte
# the loopback interface carried during the phase, both directions, IP/UDP/QUIC headers,
# handshakes and index exchange included (only when the run has a private network namespace,
# where nothing else uses lo; else "na").
#
# Environment: TANDEM (binary, default target/release/tandem), INSERT_BYTES [1048576],
#   SMALL_MAX [65536], PCT [1], PHASE_TIMEOUT_S [1800], TD_NETNS auto|1|0 (run in a private
#   network namespace that has only loopback: unshare -n, or -rn when not root) [auto],
#   KEEP_WORKDIR=1 (keep the homes and logs; path printed).
set -euo pipefail

usage() { awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; exit 2; }
[ $# -ge 2 ] && [ $# -le 3 ] || usage
MODE=${3:-initial}
[ "$MODE" = all ] && MODE=initial,noop,insert,small_modify
PHASES=(initial)
IFS=, read -r -a _req <<<"$MODE"
for p in "${_req[@]}"; do
  case "$p" in
    initial) ;;
    noop|insert|small_modify) PHASES+=("$p") ;;
    *) echo "unknown phase: $p" >&2; usage ;;
  esac
done

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
TANDEM=${TANDEM:-$(dirname "$SELF")/../../target/release/tandem}
[ -x "$TANDEM" ] || { echo "tandem binary $TANDEM not found: cargo build --release, or set TANDEM=" >&2; exit 1; }
TANDEM=$(realpath "$TANDEM"); export TANDEM
for tool in python3 diff find awk; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
PY=$(python3 -c 'import sys; print(sys.executable)')   # skip a version manager's shim on every call
[ -x /usr/bin/time ] || { echo "/usr/bin/time is required (apt-get install time)" >&2; exit 1; }

# ---------------------------------------------------------------- private network namespace
if [ "${_TDPAIR_IN_NETNS:-0}" != 1 ] && [ "${TD_NETNS:-auto}" != 0 ]; then
  if [ "$(id -u)" = 0 ]; then UNSHARE=(unshare -n); else UNSHARE=(unshare -rn); fi
  if command -v unshare >/dev/null && "${UNSHARE[@]}" true 2>/dev/null; then
    export _TDPAIR_IN_NETNS=1
    exec "${UNSHARE[@]}" -- bash "$SELF" "$@"
  elif [ "${TD_NETNS:-auto}" = 1 ]; then
    echo "TD_NETNS=1 but a network namespace could not be created" >&2; exit 1
  else
    echo "note: no private network namespace (unshare failed); wire_bytes=na" >&2
  fi
fi
ISOLATION=shared-loopback
if [ "${_TDPAIR_IN_NETNS:-0}" = 1 ]; then
  if command -v ip >/dev/null; then ip link set lo up
  elif command -v ifconfig >/dev/null; then ifconfig lo up
  else echo "cannot bring up lo in the namespace (no ip/ifconfig); rerun with TD_NETNS=0" >&2; exit 1; fi
  ISOLATION=netns-loopback-only
fi

SRC=$(cd "$1" && pwd) || { echo "SRC_DIR $1 not found" >&2; exit 1; }
mkdir -p "$2"; DST=$(cd "$2" && pwd)
[ "$SRC" != "$DST" ] || { echo "SRC_DIR and DST_DIR must differ" >&2; exit 1; }
[ -z "$(ls -A "$DST")" ] || { echo "DST_DIR $DST must be empty" >&2; exit 1; }
SRC_MARKER_EXISTED=0; [ -e "$SRC/.tandem" ] && SRC_MARKER_EXISTED=1   # tandem's folder marker
TIMEOUT=${PHASE_TIMEOUT_S:-1800}

WORK=$(mktemp -d -t tdpair.XXXXXX)
: >"$WORK/restore.tsv"
SERVE_PID=
cleanup() {
  local rc=$?
  if [ -n "$SERVE_PID" ]; then
    kill -TERM "$SERVE_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
  fi
  # put back every SRC file a phase modified; newest backup first, so the oldest (pristine) wins
  if [ -s "$WORK/restore.tsv" ]; then
    tac "$WORK/restore.tsv" | while IFS=$'\t' read -r backup orig; do
      cp -p "$backup" "$orig" || echo "WARNING: could not restore $orig from $backup" >&2
    done
    echo "# restored $(wc -l <"$WORK/restore.tsv") modified SRC file(s)" >&2
  fi
  [ "$SRC_MARKER_EXISTED" = 1 ] || rm -rf "$SRC/.tandem"
  if [ "${KEEP_WORKDIR:-0}" = 1 ]; then echo "workdir kept: $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { "$PY" -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PA=$(port); PB=$(port)
ts() { "$TANDEM" --home "$WORK/src" "$@"; }
td() { "$TANDEM" --home "$WORK/dst" "$@"; }
ts init --name src --listen "127.0.0.1:$PA" >/dev/null 2>&1
td init --name dst --listen "127.0.0.1:$PB" >/dev/null 2>&1
IS=$(ts id); ID=$(td id)
ts peer add "$ID" --addr "127.0.0.1:$PB" 2>/dev/null; td peer add "$IS" --addr "127.0.0.1:$PA" 2>/dev/null
ts folder add bench "$SRC" --share "$ID" 2>/dev/null; td folder add bench "$DST" --share "$IS" 2>/dev/null
echo "# tandem=$("$TANDEM" --version | awk '{print $2}') isolation=$ISOLATION phases=${PHASES[*]} src=$SRC dst=$DST workdir=$WORK" >&2

now() { echo "$EPOCHREALTIME"; }
lo_bytes() { # bytes received on lo (each loopback packet is received once, whatever its direction)
  if [ "$ISOLATION" = netns-loopback-only ]; then awk -F'[: ]+' '$2 == "lo" {print $3}' /proc/net/dev; else echo na; fi
}
loadavg1() { cut -d' ' -f1 /proc/loadavg; }

# run_phase NAME: times serve-startup + sync, prints one key=value line (without a newline)
run_phase() {
  local name=$1 t0 t1 t2 lo0 lo1 hz su ss sm du ds dm net reused wire verify
  rm -f "$WORK/src/control.sock"
  lo0=$(lo_bytes)
  t0=$(now)
  "$TANDEM" --home "$WORK/src" serve --log-level warn 2>>"$WORK/src.log" &
  SERVE_PID=$!
  # started = its start-up scan is done and it accepts peers (polled every 20 ms, cheaply)
  local rc=0
  "$PY" "$(dirname "$SELF")/wait_ready.py" "$WORK/src" "$TIMEOUT" "$SERVE_PID" || rc=$?
  case $rc in
    0) ;;
    3) echo "tandem serve died during $name; log:" >&2; tail -20 "$WORK/src.log" >&2; exit 1 ;;
    *) echo "serve not ready after $TIMEOUT s" >&2; exit 1 ;;
  esac
  t1=$(now)
  if ! /usr/bin/time -f "%U %S %M" -o "$WORK/dst.time" "$TANDEM" --home "$WORK/dst" sync --timeout "$TIMEOUT" \
      --log-level warn 2>"$WORK/dst.err"; then
    echo "tandem sync failed during $name:" >&2; tail -20 "$WORK/dst.err" >&2; exit 1
  fi
  t2=$(now)
  lo1=$(lo_bytes)
  hz=$(getconf CLK_TCK)
  read -r su ss < <(awk -v t="$hz" '{print $14/t, $15/t}' "/proc/$SERVE_PID/stat")
  sm=$(awk '/VmHWM/ {print $2}' "/proc/$SERVE_PID/status")
  kill -TERM "$SERVE_PID"; wait "$SERVE_PID" || true; SERVE_PID=
  read -r du ds dm < <(tail -n 1 "$WORK/dst.time")
  net=$(grep -o 'in sync: [0-9]*' "$WORK/dst.err" | grep -o '[0-9]*$' || true)
  [ -n "$net" ] || { echo "no 'in sync:' summary from tandem sync:" >&2; cat "$WORK/dst.err" >&2; exit 1; }
  reused=$(grep -o '[0-9]* bytes reused locally' "$WORK/dst.err" | grep -o '^[0-9]*' || echo na)
  if [ "$lo0" = na ]; then wire=na; else wire=$((lo1 - lo0)); fi
  if diff -rq --no-dereference --exclude='.tandem*' "$SRC" "$DST" >"$WORK/diff.out" 2>&1; then verify=ok
  else verify=FAILED; echo "SRC and DST differ after $name:" >&2; head -20 "$WORK/diff.out" >&2; fi
  "$PY" - "$name" "$t0" "$t1" "$t2" "$su" "$ss" "$sm" "$du" "$ds" "$dm" "$net" "$reused" "$wire" <<'PY'
import sys
name, t0, t1, t2, su, ss, sm, du, ds, dm, net, reused, wire = sys.argv[1:]
t0, t1, t2 = float(t0), float(t1), float(t2)
print(f"tandem_{name}_s={t2 - t0:.3f} src_scan_s={t1 - t0:.3f} sync_s={t2 - t1:.3f} "
      f"network_bytes={net} reused_bytes={reused} wire_bytes={wire} src_cpu_s={float(su) + float(ss):.2f} "
      f"dst_cpu_s={float(du) + float(ds):.2f} src_peak_rss_mib={int(sm) // 1024} "
      f"dst_peak_rss_mib={int(dm) // 1024}", end="")
PY
  [ "$verify" = ok ] || { echo " verify=FAILED"; exit 1; }
  echo -n " verify=ok"
}

corpus_kv() { "$PY" - "$SRC" <<'PY'
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

backup() { # backup FILE: keep a pristine copy, restored by cleanup
  local n
  n=$(wc -l <"$WORK/restore.tsv")
  cp -p "$1" "$WORK/backup-$n"
  printf '%s\t%s\n' "$WORK/backup-$n" "$1" >>"$WORK/restore.tsv"
}

for phase in "${PHASES[@]}"; do
  extra=
  case "$phase" in
    initial) extra="$(corpus_kv)" ;;
    insert)
      read -r size big < <(find "$SRC" -path "$SRC/.tandem" -prune -o -type f -printf '%s %p\n' | sort -n | tail -1)
      backup "$big"
      ins=${INSERT_BYTES:-1048576}
      "$PY" - "$big" "$ins" <<'PY'
import os, sys
p, n = sys.argv[1], int(sys.argv[2])
with open(p, 'r+b') as f:
    size = f.seek(0, 2); off = min(size, size // 2 + 1000)
    f.seek(off); tail = f.read()
    f.seek(off); f.write(os.urandom(n)); f.write(tail)
PY
      extra="insert_bytes=$ins file_bytes=$(stat -c %s "$big") file=${big#"$SRC"/}" ;;
    small_modify)
      # the selection and the edit are rsync_pair.sh's (find -size -(SMALL_MAX+1)c, LC_ALL=C sort)
      mapfile -t smalls < <(find "$SRC" -path "$SRC/.tandem" -prune -o -type f -size -"$(( ${SMALL_MAX:-65536} + 1 ))"c -printf '%P\n' | LC_ALL=C sort)
      step=$(( 100 / ${PCT:-1} )); (( step >= 1 )) || step=1
      count=0
      for (( i = 0; i < ${#smalls[@]}; i += step )); do
        backup "$SRC/${smalls[$i]}"; echo "$SRC/${smalls[$i]}"; count=$((count + 1))
      done >"$WORK/modify.list"
      "$PY" - "$WORK/modify.list" <<'PY'
import os, sys, time
stamp = int(time.time()) + 5   # like `touch -d @$(( $(date +%s) + 5 ))`
for p in open(sys.argv[1]).read().splitlines():
    sz = os.path.getsize(p)
    with open(p, 'r+b') as f:
        f.seek(sz // 2 - 32 if sz > 64 else 0); f.write(os.urandom(64))
    os.utime(p, (stamp, stamp))
PY
      extra="small_modify_count=$count small_files=${#smalls[@]}" ;;
  esac
  run_phase "$phase"
  echo " $extra isolation=$ISOLATION loadavg1=$(loadavg1)"
done
