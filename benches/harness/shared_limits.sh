#!/usr/bin/env bash
# What `shared: true` costs: three switchyard processes on conf/bench.yaml's settings, one
# route each, a per-client `rate_limit` that never refuses — none, counted locally, counted in
# a real redis-server on loopback — in front of the same nginx upstream, interleaved. wrk sets
# `x-client` to one of 1,000 clients per request. Proxies on cpu1 (one worker); wrk, nginx and
# Redis on cpu0. Per target and round: a latency pass (LAT_CONNS connections, wrk --latency)
# and a throughput pass (CONNS connections, CPU per request). Bounded: ROUNDS x 3 x 2 runs of
# DURATION seconds.
#   cargo build --release --bin switchyard
#   benches/harness/shared_limits.sh   # one line per run, then a markdown table
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SWITCHYARD_BIN:-$here/target/release/switchyard}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-50}
LAT_CONNS=${LAT_CONNS:-4}
# shellcheck source=lib.sh
. "$here/benches/harness/lib.sh"

P_UP=18401 P_REDIS=18409
declare -A PORT=([none]=18411 [local]=18412 [shared]=18413) PID=()
declare -A LIMIT=(
  [none]=""
  [local]=", rate_limit: {requests: 1000000, per: 1m, key: \"header:x-client\"}"
  [shared]=", rate_limit: {requests: 1000000, per: 1m, key: \"header:x-client\", shared: true}"
)

body=$(head -c 127 /dev/zero | tr '\0' 'x')
nginx_conf "$work/up" "server { listen 127.0.0.1:$P_UP backlog=4096; location / { return 200 \"$body\n\"; } }"
taskset -c 0 nginx -p "$work/up/" -c "$work/up/nginx.conf" -e "$work/up/error.log" &
pids+=($!)
taskset -c 0 redis-server --port "$P_REDIS" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$work" >"$work/redis.log" 2>&1 &
PID[redis]=$!; pids+=($!)

targets=(none local shared)
for i in "${!targets[@]}"; do
  t=${targets[$i]}
  mkdir -p "$work/$t"
  cat >"$work/$t/proxy.yaml" <<YAML
version: 1
server: {threads: 1, pid_file: "$work/$t/switchyard.pid", upgrade_sock: "$work/$t/upgrade.sock"}
admin: {listen: "127.0.0.1:$((18421 + i))"}
store:
  redis: {url: "redis://127.0.0.1:$P_REDIS/0", timeout: 50ms}
listeners:
  - {name: bench, listen: "127.0.0.1:${PORT[$t]}"}
pools:
  up: {health_check: {kind: tcp, interval: 5s}, backends: [{address: "127.0.0.1:$P_UP"}]}
routes:
  - {name: all, match: {path_prefix: /}, pool: up${LIMIT[$t]}}
edge: {access_log: {enabled: false}, security_headers: false}
YAML
  RUST_LOG=warn taskset -c 1 "$bin" run -c "$work/$t/proxy.yaml" >"$work/$t.log" 2>&1 &
  PID[$t]=$!; pids+=($!)
done

cat >"$work/clients.lua" <<'LUA'
request = function()
  wrk.headers["x-client"] = "client-" .. math.random(1000)
  return wrk.format(nil, "/")
end
LUA
load() {  # load CONNS SECONDS TARGET [--latency]
  taskset -c 0 wrk -t1 -c"$1" -d"$2s" -s "$work/clients.lua" ${4:-} "http://127.0.0.1:${PORT[$3]}/"
}
for t in "${targets[@]}"; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:${PORT[$t]}/" && break; sleep 0.1; done
  load "$CONNS" 2 "$t" >/dev/null  # warm-up
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # utime + stime, in clock ticks
hz=$(getconf CLK_TCK)
results=$work/results.tsv
for r in $(seq "$ROUNDS"); do
  for i in "${!targets[@]}"; do  # rotated order: A B C, B C A, C A B
    t=${targets[$(((i + r - 1) % ${#targets[@]}))]}
    lat=$(load "$LAT_CONNS" "$DURATION" "$t" --latency)
    p50=$(awk '/ 50%/{print $2}' <<<"$lat")
    p99=$(awk '/ 99%/{print $2}' <<<"$lat")
    c0=$(ticks "${PID[$t]}"); q0=$(ticks "${PID[redis]}")
    out=$(load "$CONNS" "$DURATION" "$t")
    c1=$(ticks "${PID[$t]}"); q1=$(ticks "${PID[redis]}")
    reqs=$(awk '/requests in/{print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    bad=$(awk '/Non-2xx/{print $NF}' <<<"$out")
    awk -v t="$t" -v r="$r" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v n="$reqs" -v hz="$hz" \
      -v c=$((c1 - c0)) -v q=$((q1 - q0)) -v bad="${bad:-0}" 'BEGIN {
        printf "%s\t%s\t%.0f\t%s\t%s\t%.3f\t%.3f\t%s\n", t, r, rps, p50, p99, c / hz * 10000 / n, q / hz * 10000 / n, bad }' \
      | tee -a "$results" >&2
  done
done

python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
def ms(v):
    for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * f
    return float(v)
med = {}
for t in ("none", "local", "shared"):
    mine = [r for r in rows if r[0] == t]
    m = lambda f: statistics.median(f(r) for r in mine)
    med[t] = (m(lambda r: float(r[2])), m(lambda r: ms(r[3])), m(lambda r: ms(r[4])),
              m(lambda r: float(r[5])), m(lambda r: float(r[6])), sum(int(r[7]) for r in mine))
names = {"none": "no rate_limit", "local": "rate_limit (local)", "shared": "rate_limit shared: true"}
print("| config | rps | p50 ms | p99 ms | p50 / p99 added vs local | proxy CPU s / 10k req | × local | redis CPU s / 10k req | non-2xx |")
print("|---|---|---|---|---|---|---|---|---|")
lo = med["local"]
for t, (rps, p50, p99, cpu, rcpu, bad) in med.items():
    added = f"{p50 - lo[1]:+.3f} / {p99 - lo[2]:+.3f}"
    print(f"| {names[t]} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {added} | {cpu:.3f} | {cpu / lo[3]:.2f} × | {rcpu:.3f} | {bad} |")
EOF
