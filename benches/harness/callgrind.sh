#!/usr/bin/env bash
# Instructions per request, user space, counted by valgrind's callgrind: repeatable for the
# same binary and inputs whatever else the machine does, so a change of a few percent shows
# (the CPU-seconds of table.sh need a quiet machine and several rounds for that). Runs the
# bare Pingora proxy and switchyard (conf/bench.yaml) in turn under callgrind in front of one
# nginx upstream, sends the same WARM then N keep-alive requests from `ab` (C connections),
# and prints instructions per request (of the N only) and each one's top
# functions by inclusive cost. Bounded: two runs of N requests each.
#   cargo build --release --bin switchyard --example bare_pingora
#   N=20000 benches/harness/callgrind.sh      # KEEP=DIR keeps the two profiles there
#   CONFIG=FILE: switchyard's config instead of conf/bench.yaml (its placeholders filled alike)
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SWITCHYARD_BIN:-$here/target/release/switchyard}
bare=${BARE_BIN:-$here/target/release/examples/bare_pingora}
N=${N:-20000}
WARM=${WARM:-2000}
C=${C:-10}
TOP=${TOP:-25}
# shellcheck source=lib.sh
. "$here/benches/harness/lib.sh"

P_UP=18601 P_PROXY=18602
body=$(head -c 127 /dev/zero | tr '\0' 'x')
nginx_conf "$work/up" "server { listen 127.0.0.1:$P_UP backlog=4096; location / { return 200 \"$body\n\"; } }"
nginx -p "$work/up/" -c "$work/up/nginx.conf" -e "$work/up/error.log" &
pids+=($!)

# measure NAME CMD...: counters zeroed once the proxy answers, dumped after WARM requests
# (file .1) and again after N more (file .2, the measured ones).
measure() {
  local name=$1; shift
  local out=$work/$name.callgrind
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$work/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$P_PROXY/" && break; sleep 0.1; done
  callgrind_control -z "$pid" >/dev/null
  ab -q -k -c "$C" -n "$WARM" "http://127.0.0.1:$P_PROXY/" >/dev/null
  callgrind_control -d warm "$pid" >/dev/null
  ab -q -k -c "$C" -n "$N" "http://127.0.0.1:$P_PROXY/" >"$work/$name.ab"
  callgrind_control -d run "$pid" >/dev/null
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local failed
  failed=$(awk '/Failed requests/{print $3}' "$work/$name.ab")
  local total
  total=$(callgrind_annotate "$out".2 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
  printf '%s\t%s\t%s\n' "$name" "$((total / N))" "$failed" | tee -a "$work/results.tsv"
  if [[ -n ${KEEP:-} ]]; then cp "$out".2 "$KEEP/$name.callgrind"; fi
  callgrind_annotate --inclusive=yes "$out".2 2>/dev/null | grep -E "^ *[0-9,]+ " \
    | head -"$TOP" >"$work/$name.top" || true
}

measure bare "$bare" "127.0.0.1:$P_PROXY" "127.0.0.1:$P_UP"
mkdir -p "$work/sy"
BENCH_WORK=$work/sy BENCH_LISTEN=127.0.0.1:$P_PROXY BENCH_UPSTREAM=127.0.0.1:$P_UP \
  BENCH_ADMIN=127.0.0.1:18609 RUST_LOG=warn measure switchyard "$bin" run -c "${CONFIG:-$here/conf/bench.yaml}"

echo
echo "| target | instructions / request | failed |"
echo "|---|---|---|"
awk -F'\t' '{printf "| %s | %\047d | %s |\n", $1, $2, $3}' "$work/results.tsv"
for t in bare switchyard; do
  echo; echo "$t, top $TOP by inclusive instructions (the measured requests only):"
  cat "$work/$t.top"
done
