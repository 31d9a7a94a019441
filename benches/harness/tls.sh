#!/usr/bin/env bash
# TLS side by side: switchyard, nginx and the bare Pingora proxy (examples/bare_pingora.rs,
# Pingora's floor) terminate TLS with the same certificate in front of the same nginx
# upstream; wrk measures keep-alive requests/s and new connections/s (every
# request on a new TLS connection, `Connection: close`). Proxies on cpu1 with one worker,
# wrk and the upstream on cpu0, like ../shared/bench/compare.sh. Bounded: ROUNDS x 2 runs of
# DURATION seconds per proxy. Needs wrk, nginx, openssl and target/release/switchyard (and
# target/release/examples/bare_pingora for its row: `cargo build --release --bin switchyard
# --example bare_pingora`).
#   benches/harness/tls.sh            # prints a markdown table
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SWITCHYARD_BIN:-$here/target/release/switchyard}
bare=${BARE_BIN:-$here/target/release/examples/bare_pingora}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
# shellcheck source=lib.sh
. "$here/benches/harness/lib.sh"

P_UP=18201 P_NGINX=18202 P_OURS=18203 P_ADMIN=18204 P_BARE=18205
edge_cert

body=$(head -c 127 /dev/zero | tr '\0' 'x')
nginx_conf "$work/up" "server { listen 127.0.0.1:$P_UP backlog=4096; location / { return 200 \"$body\n\"; } }"
taskset -c 0 nginx -p "$work/up/" -c "$work/up/nginx.conf" -e "$work/up/error.log" &
pids+=($!)

nginx_conf "$work/nginx" "upstream be { server 127.0.0.1:$P_UP; keepalive 128; }
  server {
    listen 127.0.0.1:$P_NGINX ssl http2 backlog=4096;
    ssl_certificate $work/edge.crt; ssl_certificate_key $work/edge.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }"
taskset -c 1 nginx -p "$work/nginx/" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
pids+=($!)
nginx_pid=$!

cat >"$work/switchyard.yaml" <<EOF
version: 1
server: {threads: 1, pid_file: $work/sy.pid, upgrade_sock: $work/sy.sock, grace_period_seconds: 1, graceful_shutdown_timeout_seconds: 1}
admin: {listen: "127.0.0.1:$P_ADMIN"}
listeners:
  - {name: https, listen: "127.0.0.1:$P_OURS", tls: {certificates: [{cert: $work/edge.crt, key: $work/edge.key}]}}
pools:
  up: {health_check: {kind: tcp, interval: 5s}, backends: [{address: "127.0.0.1:$P_UP"}]}
routes:
  - {name: all, match: {path_prefix: /}, pool: up}
edge: {access_log: {enabled: false}, security_headers: false}
EOF
RUST_LOG=warn taskset -c 1 "$bin" run -c "$work/switchyard.yaml" >"$work/sy.log" 2>&1 &
pids+=($!)
ours_pid=$!

ports=("$P_NGINX" "$P_OURS")
bare_pid=
if [[ -x $bare ]]; then
  taskset -c 1 "$bare" "127.0.0.1:$P_BARE" "127.0.0.1:$P_UP" 1 "$work/edge.crt" "$work/edge.key" \
    >"$work/bare.log" 2>&1 &
  pids+=($!)
  bare_pid=$!
  ports+=("$P_BARE")
fi

for port in "${ports[@]}"; do
  for _ in $(seq 1 100); do
    curl -skf -o /dev/null "https://127.0.0.1:$port/" && break
    sleep 0.1
  done
done
if [[ -n $bare_pid ]] && ! curl -skf -o /dev/null "https://127.0.0.1:$P_BARE/"; then
  echo "bare Pingora did not come up (see below); its rows are left out" >&2
  cat "$work/bare.log" >&2
  bare_pid=
fi

cpu_ticks() {  # pid: utime+stime of the process and its children processes
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

run() {  # name pid port extra-wrk-args...
  local name=$1 pid=$2 port=$3; shift 3
  local before after out rps
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" "https://127.0.0.1:$port/")
  after=$(cpu_ticks "$pid")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  local p99; p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  local errs; errs=$(awk '/Socket errors|Non-2xx/ {print}' <<<"$out" | tr '\n' ' ')
  local cpu; cpu=$(awk -v t=$((after - before)) -v r="$rps" -v d="$DURATION" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.3f", (t / hz) / (r * d) * 10000 }')
  echo "| $name | $rps | $p99 | $cpu | ${errs:-0} |"
}

echo "TLS: $(uname -r), $(nproc) CPUs, $(nginx -v 2>&1), $("$bin" --version)"
for mode in keepalive newconn; do
  args=()
  [[ $mode == newconn ]] && args=(-H "Connection: close")
  echo
  echo "### $mode ($CONNS connections, ${DURATION}s, $ROUNDS interleaved rounds)"
  echo
  echo "| target | requests/s | p99 | CPU s / 10k req | errors |"
  echo "|---|---|---|---|---|"
  for r in $(seq 1 "$ROUNDS"); do
    run nginx "$nginx_pid" "$P_NGINX" "${args[@]}"
    run switchyard "$ours_pid" "$P_OURS" "${args[@]}"
    if [[ -n $bare_pid ]]; then run "bare Pingora" "$bare_pid" "$P_BARE" "${args[@]}"; fi
  done
done
