#!/usr/bin/env bash
# PROXY_CMD for ../shared/bench/compare.sh: runs switchyard in the foreground on
# conf/bench.yaml with the harness's listen address, upstream and thread count.
#   PROXY_CMD=benches/harness/switchyard.sh PROXY_URL=http://127.0.0.1:18080 \
#     RELOAD_CMD='kill -HUP $BENCH_PROXY_PID' ../shared/bench/compare.sh all
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SWITCHYARD_BIN:-$here/target/release/switchyard}
conf=$BENCH_WORK/proxy.yaml
sed "s/^  threads: 1$/  threads: ${BENCH_THREADS:-1}/" "$here/conf/bench.yaml" > "$conf"
export BENCH_WORK BENCH_LISTEN BENCH_UPSTREAM
RUST_LOG=${RUST_LOG:-warn} exec "$bin" run -c "$conf"
