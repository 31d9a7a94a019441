#!/usr/bin/env bash
# How much of switchyard's CPU per request is Pingora's own: nginx, a bare Pingora proxy
# (examples/bare_pingora.rs: empty ProxyHttp, same allocator, upstream keep-alive) and
# switchyard on conf/bench.yaml, in front of the same nginx upstream, interleaved. Same
# layout as ../shared/bench/compare.sh: proxies on cpu1 with one worker, wrk (1 thread) and
# the upstream on cpu0. Bounded: ROUNDS x 3 runs of DURATION seconds.
#   cargo build --release --bin switchyard --example bare_pingora
#   benches/harness/floor.sh          # prints one line per run, then a markdown table
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SWITCHYARD_BIN:-$here/target/release/switchyard}
bare=${BARE_BIN:-$here/target/release/examples/bare_pingora}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-50}
# shellcheck source=lib.sh
. "$here/benches/harness/lib.sh"

P_UP=18301
declare -A PORT=([nginx]=18311 [bare]=18312 [switchyard]=18313) PID=()

body=$(head -c 127 /dev/zero | tr '\0' 'x')
nginx_conf "$work/up" "server { listen 127.0.0.1:$P_UP backlog=4096; location / { return 200 \"$body\n\"; } }"
taskset -c 0 nginx -p "$work/up/" -c "$work/up/nginx.conf" -e "$work/up/error.log" &
pids+=($!)

nginx_conf "$work/nginx" "upstream be { server 127.0.0.1:$P_UP; keepalive 128; }
  server { listen 127.0.0.1:${PORT[nginx]} backlog=4096;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
taskset -c 1 nginx -p "$work/nginx/" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
PID[nginx]=$!; pids+=($!)

taskset -c 1 "$bare" "127.0.0.1:${PORT[bare]}" "127.0.0.1:$P_UP" >"$work/bare.log" 2>&1 &
PID[bare]=$!; pids+=($!)

mkdir -p "$work/sy"
BENCH_WORK=$work/sy BENCH_LISTEN=127.0.0.1:${PORT[switchyard]} BENCH_UPSTREAM=127.0.0.1:$P_UP \
  BENCH_ADMIN=127.0.0.1:18319 RUST_LOG=warn \
  taskset -c 1 "$bin" run -c "$here/conf/bench.yaml" >"$work/switchyard.log" 2>&1 &
PID[switchyard]=$!; pids+=($!)

targets=(nginx bare switchyard)
for t in "${targets[@]}"; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:${PORT[$t]}/" && break; sleep 0.1; done
  taskset -c 0 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:${PORT[$t]}/" >/dev/null  # warm-up
done

ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }  # utime stime, in clock ticks
hz=$(getconf CLK_TCK)
results=$work/results.tsv
for r in $(seq "$ROUNDS"); do
  for i in "${!targets[@]}"; do  # rotated order: A B C, B C A, C A B
    t=${targets[$(((i + r - 1) % ${#targets[@]}))]}
    read -r u0 s0 < <(ticks "${PID[$t]}")
    out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:${PORT[$t]}/")
    read -r u1 s1 < <(ticks "${PID[$t]}")
    reqs=$(awk '/requests in/{print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    p99=$(awk '/ 99%/{print $2}' <<<"$out")
    awk -v t="$t" -v r="$r" -v rps="$rps" -v p99="$p99" -v n="$reqs" -v hz="$hz" \
      -v u=$((u1 - u0)) -v s=$((s1 - s0)) 'BEGIN {
        printf "%s\t%s\t%.0f\t%s\t%.3f\t%.3f\n", t, r, rps, p99, u / hz * 10000 / n, s / hz * 10000 / n }' \
      | tee -a "$results" >&2
  done
done

python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
med = {}
for t in ("nginx", "bare", "switchyard"):
    mine = [r for r in rows if r[0] == t]
    rps = statistics.median(float(r[2]) for r in mine)
    user = statistics.median(float(r[4]) for r in mine)
    sys_ = statistics.median(float(r[5]) for r in mine)
    total = statistics.median(float(r[4]) + float(r[5]) for r in mine)
    med[t] = (rps, user, sys_, total)
names = {"nginx": "nginx", "bare": "bare Pingora", "switchyard": "switchyard"}
print("| target | rps | CPU s / 10k req (user + sys) | user | sys | CPU / nginx |")
print("|---|---|---|---|---|---|")
for t, (rps, user, sys_, total) in med.items():
    print(f"| {names[t]} | {rps:,.0f} | {total:.3f} | {user:.3f} | {sys_:.3f} | {total / med['nginx'][3]:.2f} × |")
EOF
