#!/usr/bin/env bash
# The one table of docs/benchmarks.md, from one run: nginx, HAProxy, Pingap (when a binary
# is found), a bare Pingora proxy (examples/bare_pingora.rs) and switchyard in three configs,
# side by side in front of the same nginx upstream, in the layout of
# ../shared/bench/compare.sh (proxies on PROXY_CPUS, each with one worker per CPU there; wrk
# and the upstream on LOADGEN_CPUS). All are up at once; each round runs every target once,
# in an order rotated by one each round. Per target, medians over the rounds: requests/s,
# CPU seconds per 10k requests (utime + stime of the process tree, from /proc), p50/p99 (wrk
# --latency), peak RSS (VmHWM summed over the tree). Bounded: ROUNDS x targets runs of
# DURATION seconds. Loopback only.
#
# The switchyard configs: `switchyard` is conf/bench.yaml (like the peers: no access log, no
# security headers); `switchyard-defaults` is a plain proxied route with everything that is
# on by default (request id, forwarded headers, metrics, security headers) but the access
# log; `switchyard-log` adds the default access log (JSON lines on stdout, to a file).
#   cargo build --release --bin switchyard --example bare_pingora
#   benches/harness/table.sh                   # ROUNDS=5 DURATION=8 CONNS=50
#   PROXY_CPUS=0,1 LOADGEN_CPUS=0,1 benches/harness/table.sh   # two workers, shared cores
#   PINGAP_BIN=~/.cargo/bin/pingap benches/harness/table.sh      # default: pingap on PATH
#   AB_BIN=/tmp/switchyard-before benches/harness/table.sh  # + `switchyard-ab`: that binary on
#                                                          # conf/bench.yaml, for an A/B in one run
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SWITCHYARD_BIN:-$here/target/release/switchyard}
bare=${BARE_BIN:-$here/target/release/examples/bare_pingora}
pingap=${PINGAP_BIN:-$(command -v pingap || true)}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
CONNS=${CONNS:-50}
PROXY_CPUS=${PROXY_CPUS:-1}
LOADGEN_CPUS=${LOADGEN_CPUS:-0}
threads=$(taskset -c "$PROXY_CPUS" nproc)
wrk_threads=$(taskset -c "$LOADGEN_CPUS" nproc)
# shellcheck source=lib.sh
. "$here/benches/harness/lib.sh"

P_UP=18701
declare -A PORT=([nginx]=18711 [haproxy]=18712 [pingap]=18713 [bare]=18714
  [switchyard]=18715 [switchyard-defaults]=18716 [switchyard-log]=18717 [switchyard-ab]=18718) PID=()
targets=(nginx haproxy)
[[ -n $pingap ]] && targets+=(pingap)
targets+=(bare switchyard switchyard-defaults switchyard-log)
[[ -n ${AB_BIN:-} ]] && targets+=(switchyard-ab)

# exec: a `&` job of this function is then the proxy itself, so the cleanup can stop it by pid.
on_proxy_cpus() { exec taskset -c "$PROXY_CPUS" "$@"; }

body=$(head -c 127 /dev/zero | tr '\0' 'x')
nginx_conf "$work/up" "server { listen 127.0.0.1:$P_UP backlog=4096; location / { return 200 \"$body\n\"; } }"
taskset -c "$LOADGEN_CPUS" nginx -p "$work/up/" -c "$work/up/nginx.conf" -e "$work/up/error.log" &
pids+=($!)

nginx_conf "$work/nginx" "upstream be { server 127.0.0.1:$P_UP; keepalive 128; }
  server { listen 127.0.0.1:${PORT[nginx]} backlog=4096;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" \
  4096 "$threads"
on_proxy_cpus nginx -p "$work/nginx/" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
PID[nginx]=$!; pids+=($!)

# HAProxy as compare.sh configures it, in the foreground (-db): one process, nbthread workers.
cat >"$work/haproxy.cfg" <<CONF
global
  nbthread $threads
  maxconn 10000
  no strict-limits
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
frontend fe
  bind 127.0.0.1:${PORT[haproxy]} backlog 4096
  default_backend be
backend be
  http-reuse safe
  server s1 127.0.0.1:$P_UP maxconn 10000
CONF
on_proxy_cpus haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
PID[haproxy]=$!; pids+=($!)

if [[ -n $pingap ]]; then  # as compare.sh configures it
  mkdir -p "$work/pingap"
  cat >"$work/pingap/pingap.toml" <<CONF
[basic]
threads = $threads
pid_file = "$work/pingap/pingap.pid"
upgrade_sock = "$work/pingap/upgrade.sock"
log_level = "warn"
upstream_keepalive_pool_size = 128

[upstreams.be]
addrs = ["127.0.0.1:$P_UP"]

[locations.lo]
upstream = "be"

[servers.bench]
addr = "127.0.0.1:${PORT[pingap]}"
locations = ["lo"]
CONF
  on_proxy_cpus "$pingap" -c "$work/pingap/pingap.toml" >"$work/pingap.log" 2>&1 &
  PID[pingap]=$!; pids+=($!)
fi

on_proxy_cpus "$bare" "127.0.0.1:${PORT[bare]}" "127.0.0.1:$P_UP" "$threads" >"$work/bare.log" 2>&1 &
PID[bare]=$!; pids+=($!)

# switchyard NAME EDGE-SECTION ADMIN-PORT [BINARY]: conf/bench.yaml with its thread count and
# `edge:`.
switchyard() {
  local d=$work/$1 binary=${4:-$bin}
  mkdir -p "$d"
  sed -e "s/^  threads: 1$/  threads: $threads/" -e '/^edge:/,$d' "$here/conf/bench.yaml" >"$d/proxy.yaml"
  printf '%s\n' "$2" >>"$d/proxy.yaml"
  BENCH_WORK=$d BENCH_LISTEN=127.0.0.1:${PORT[$1]} BENCH_UPSTREAM=127.0.0.1:$P_UP \
    BENCH_ADMIN=127.0.0.1:$3 RUST_LOG=warn \
    on_proxy_cpus "$binary" run -c "$d/proxy.yaml" >"$d/stdout" 2>"$d/stderr" &
  PID[$1]=$!; pids+=($!)
}
switchyard switchyard $'edge:\n  access_log: {enabled: false}\n  security_headers: false' 18721
switchyard switchyard-defaults $'edge:\n  access_log: {enabled: false}' 18722
switchyard switchyard-log 'edge: {}' 18723
if [[ -n ${AB_BIN:-} ]]; then
  switchyard switchyard-ab $'edge:\n  access_log: {enabled: false}\n  security_headers: false' 18724 "$AB_BIN"
fi

load() { taskset -c "$LOADGEN_CPUS" wrk -t"$wrk_threads" -c"$CONNS" "$@"; }
for t in "${targets[@]}"; do
  for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:${PORT[$t]}/" && break; sleep 0.1; done
  curl -sf -o /dev/null "http://127.0.0.1:${PORT[$t]}/" || { echo "$t does not answer" >&2; exit 1; }
  load -d2s "http://127.0.0.1:${PORT[$t]}/" >/dev/null  # warm-up
done

# tree PID: the process and its children (nginx with a master, when THREADS > 1).
tree() { echo "$1"; pgrep -P "$1" || true; }
ticks() {  # utime + stime of the tree, in clock ticks
  local sum=0 p
  for p in $(tree "$1"); do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$sum"
}
hwm() {  # summed VmHWM, kB
  local sum=0 p
  for p in $(tree "$1"); do sum=$((sum + $(awk '/VmHWM/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done
  echo "$sum"
}
ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}' <<<"$1"; }

hz=$(getconf CLK_TCK)
results=$work/results.tsv
for r in $(seq "$ROUNDS"); do
  for i in "${!targets[@]}"; do
    t=${targets[$(((i + r - 1) % ${#targets[@]}))]}
    c0=$(ticks "${PID[$t]}")
    out=$(load -d"${DURATION}s" --latency "http://127.0.0.1:${PORT[$t]}/")
    c1=$(ticks "${PID[$t]}")
    reqs=$(awk '/requests in/{print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    p50=$(ms "$(awk '/ 50%/{print $2}' <<<"$out")")
    p99=$(ms "$(awk '/ 99%/{print $2}' <<<"$out")")
    errors=$(awk '/Non-2xx|Socket errors/{n++} END {print n + 0}' <<<"$out")
    awk -v t="$t" -v r="$r" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v n="$reqs" -v hz="$hz" \
      -v c=$((c1 - c0)) -v rss="$(hwm "${PID[$t]}")" -v e="$errors" 'BEGIN {
        printf "%s\t%s\t%.0f\t%.3f\t%s\t%s\t%d\t%s\n", t, r, rps, c / hz * 10000 / n, p50, p99, rss, e }' \
      | tee -a "$results" >&2
  done
done

echo
echo "Machine: $(nproc) cores, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo);" \
  "proxies on cpu $PROXY_CPUS ($threads worker(s) each), wrk -t$wrk_threads -c$CONNS and the upstream on cpu $LOADGEN_CPUS;" \
  "$ROUNDS rounds of ${DURATION}s; $(date -u +%F)."
echo
python3 - "$results" "${targets[@]}" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
med = {}
for t in sys.argv[2:]:
    mine = [r for r in rows if r[0] == t]
    col = lambda i: statistics.median(float(r[i]) for r in mine)
    cpu = [float(r[3]) for r in mine]
    med[t] = dict(rps=col(2), cpu=col(3), lo=min(cpu), hi=max(cpu), p50=col(4), p99=col(5),
                  rss=max(int(r[6]) for r in mine) / 1024, err=sum(int(r[7]) for r in mine))
n, b = med["nginx"], med["bare"]
print("| target | rps | × nginx | CPU s / 10k req (min–max) | CPU × nginx | CPU × bare Pingora | p50 ms | p99 ms | peak RSS MiB | runs with errors |")
print("|---|---|---|---|---|---|---|---|---|---|")
for t, m in med.items():
    print(f"| {t} | {m['rps']:,.0f} | {m['rps'] / n['rps']:.2f} | {m['cpu']:.3f} ({m['lo']:.3f}–{m['hi']:.3f}) "
          f"| {m['cpu'] / n['cpu']:.2f} | {m['cpu'] / b['cpu']:.2f} | {m['p50']:.2f} | {m['p99']:.2f} "
          f"| {m['rss']:.1f} | {m['err']} |")
EOF
