#!/usr/bin/env bash
# latency.sh — propagation latency of a 4 KiB edit between two `tandem serve` on 127.0.0.1
# (watcher-triggered, like syncthing_pair.sh edit mode with trigger=watch). Prints
# tandem_edit_latency n=7 median_s=… min_s=… max_s=…. Needs a release build.
set -e
B=${TANDEM:-$(dirname "$0")/../../target/release/tandem}; W=$(mktemp -d); mkdir -p $W/a/f $W/b/f
$B --home $W/a/h init --listen 127.0.0.1:24401 >/dev/null 2>&1; $B --home $W/b/h init --listen 127.0.0.1:24402 >/dev/null 2>&1
IA=$($B --home $W/a/h id); IB=$($B --home $W/b/h id)
$B --home $W/a/h peer add $IB --addr 127.0.0.1:24402 2>/dev/null; $B --home $W/b/h peer add $IA --addr 127.0.0.1:24401 2>/dev/null
$B --home $W/a/h folder add f $W/a/f --share $IB 2>/dev/null; $B --home $W/b/h folder add f $W/b/f --share $IA 2>/dev/null
$B --home $W/a/h serve --log-level warn 2>$W/a.log & PA=$!
$B --home $W/b/h serve --log-level warn 2>$W/b.log & PB=$!
sleep 3
W=$W python3 - <<'PY'
import os, time, statistics
vals=[]
for i in range(7):
    data=os.urandom(4096)
    t=time.time()
    with open(os.environ['W']+'/a/f/edit.bin','wb') as f: f.write(data)
    while True:
        try:
            if open(os.environ['W']+'/b/f/edit.bin','rb').read()==data: break
        except FileNotFoundError: pass
        time.sleep(0.002)
    vals.append(time.time()-t); time.sleep(0.5)
print("tandem_edit_latency n=7 median_s=%.3f min_s=%.3f max_s=%.3f" % (statistics.median(vals), min(vals), max(vals)))
PY
kill $PA $PB; rm -rf "$W"
