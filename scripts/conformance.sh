#!/bin/sh
# `make conformance`: CPython's own asyncio tests on asyncio's default loop and on
# ErlangEventLoop, each module in a fresh node with a time limit, then the comparison.
set -u
out=${1:-.test-logs/conformance}
rm -rf "$out"
mkdir -p "$out"
modules="test_events test_tasks test_futures test_locks test_queues test_streams test_server
test_sock_lowlevel test_subprocess test_timeouts test_taskgroups test_base_events"
for m in $modules; do
    timeout -k 10 900 escript test/conformance/run_module.escript "$m" "$out/$m.json" \
        >"$out/$m.log" 2>&1 || echo "$m: did not complete (exit $?)" >>"$out/$m.log"
    tail -n 1 "$out/$m.log"
done
python3 scripts/conformance_report.py "$out" docs/asyncio.md
