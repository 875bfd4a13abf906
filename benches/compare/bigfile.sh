#!/usr/bin/env bash
# bigfile.sh [GIB...] — one very large file between two tandem devices on 127.0.0.1 (issue 6's
# scale run for file size; not in CI). For each GIB (default 10): a file of GIB GiB of
# pseudo-random bytes (AES-CTR keystream, generated once as /tmp/tandem-bigfile/GIB/big.bin and
# kept), then `tandem_pair.sh` on it: the sender's first scan, the transfer, and with
# BIGFILE_INSERT=1 also a 1 MiB insertion in the middle (that phase backs the file up first:
# it needs a third copy's worth of free disk).
# Prints one `tandem_bigfile gib=… …` line per size: end-to-end and per-phase seconds,
# throughput, both processes' CPU seconds and peak RSS, and (with the insertion) its time and
# bytes. Needs a release build and 2 × GIB GiB free under /tmp (3 × with BIGFILE_INSERT=1).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
B=${TANDEM:-$HERE/../../target/release/tandem}
[ -x "$B" ] || { echo "build first: cargo build --release" >&2; exit 1; }
SIZES=${*:-10}
PHASES=initial
[ "${BIGFILE_INSERT:-0}" = 1 ] && PHASES=initial,insert
for G in $SIZES; do
  SRC=/tmp/tandem-bigfile/$G
  if [ ! -f "$SRC.complete" ]; then
    rm -rf "$SRC"; mkdir -p "$SRC"
    # openssl dies of SIGPIPE when head has enough: not an error here
    (set +o pipefail; openssl enc -aes-128-ctr -nosalt -pass pass:tandem-bigfile -pbkdf2 \
      </dev/zero 2>/dev/null | head -c $((G << 30)) >"$SRC/big.bin")
    [ "$(stat -c %s "$SRC/big.bin")" = $((G << 30)) ] || { echo "could not write $SRC" >&2; exit 1; }
    touch "$SRC.complete"
  fi
  need_kib=$(( (G << 20) * (${BIGFILE_INSERT:-0} + 1) + (1 << 20) ))
  free_kib=$(df -k --output=avail /tmp | tail -1)
  [ "$free_kib" -gt "$need_kib" ] || { echo "need $need_kib KiB free in /tmp, have $free_kib" >&2; exit 1; }
  DST=$(mktemp -d /tmp/tandem-bigfile-dst.XXXX); rmdir "$DST"
  out=$(TANDEM=$B bash "$HERE/tandem_pair.sh" "$SRC" "$DST" "$PHASES")
  rm -rf "$DST"
  line=$(grep -m1 '^tandem_initial_s=' <<<"$out")
  total=$(grep -o 'tandem_initial_s=[0-9.]*' <<<"$line" | cut -d= -f2)
  sync_s=$(grep -o ' sync_s=[0-9.]*' <<<"$line" | cut -d= -f2)
  printf 'tandem_bigfile gib=%s end_to_end_gb_s=%s transfer_gb_s=%s %s\n' "$G" \
    "$(awk -v g="$G" -v t="$total" 'BEGIN {printf "%.3f", g * 1.073741824 / t}')" \
    "$(awk -v g="$G" -v t="$sync_s" 'BEGIN {printf "%.3f", g * 1.073741824 / t}')" "$line"
  grep '^tandem_insert_s=' <<<"$out" | sed "s/^/tandem_bigfile_insert gib=$G /" || true
done
