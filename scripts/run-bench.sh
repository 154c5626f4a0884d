#!/bin/sh
# `make bench`: compiles the benchmark modules and runs them on the built application.
# `make bench BENCH=event_loop` runs one group (the JSON then holds only that group).
# Benchmarks, not tests: they print a table and write bench/results/latest.json.
set -eu
out=_build/bench
mkdir -p "$out" bench/results
erlc -o "$out" bench/*.erl
# The asyncio and async groups' baselines run in a venv with uvloop.
case " ${BENCH:-asyncio} " in
    *" asyncio "* | *" async "*) sh scripts/bench-env.sh ;;
esac
# Optional group names (e.g. BENCH=event_loop) limit the run.
exec erl -noshell -pa _build/default/lib/pybeam/ebin "$out" \
    -run pybeam_bench main bench/results/latest.json ${BENCH:-}
