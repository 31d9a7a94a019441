#!/usr/bin/env bash
# Memory per idle TLS keep-alive connection, nginx and switchyard with the same certificate:
# N connections each make a TLS handshake, send one request and stay idle
# (../shared/bench/lib/idle_conns.py over TLS); VmRSS of the proxy before and after.
# compare.sh's scale mode does the same over plaintext. Needs nginx, openssl, python3.
#   N=2000 benches/harness/idle_tls.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SWITCHYARD_BIN:-$here/target/release/switchyard}
idle_conns=${IDLE_CONNS:-$here/../shared/bench/lib/idle_conns.py}
N=${N:-2000}
P_UP=18801 P_NGINX=18802 P_OURS=18803 P_ADMIN=18804
# shellcheck source=lib.sh
. "$here/benches/harness/lib.sh"
edge_cert

nginx_conf "$work/up" "server { listen 127.0.0.1:$P_UP backlog=4096; location / { return 200 \"ok\n\"; } }" $((N * 3))
nginx -p "$work/up/" -c "$work/up/nginx.conf" -e "$work/up/error.log" &
pids+=($!)
nginx_conf "$work/nginx" "upstream be { server 127.0.0.1:$P_UP; keepalive 128; }
  server { listen 127.0.0.1:$P_NGINX ssl backlog=4096;
    ssl_certificate $work/edge.crt; ssl_certificate_key $work/edge.key;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" $((N * 3))
nginx -p "$work/nginx/" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
nginx_pid=$!
pids+=($nginx_pid)

cat >"$work/switchyard.yaml" <<EOF
version: 1
server: {threads: 1, pid_file: $work/switchyard.pid, upgrade_sock: $work/upgrade.sock}
admin: {listen: "127.0.0.1:$P_ADMIN"}
listeners:
  - {name: https, listen: "127.0.0.1:$P_OURS", tls: {certificates: [{cert: $work/edge.crt, key: $work/edge.key}]}}
pools:
  up: {backends: [{address: "127.0.0.1:$P_UP"}]}
routes:
  - {name: all, match: {path_prefix: /}, pool: up}
edge: {access_log: {enabled: false}}
EOF
RUST_LOG=warn "$bin" run -c "$work/switchyard.yaml" >"$work/switchyard.log" 2>&1 &
ours_pid=$!
pids+=($ours_pid)

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
echo "| target | connections held | RSS before | RSS with idle | KB per idle connection |"
echo "|---|---|---|---|---|"
for t in nginx switchyard; do
  if [[ $t == nginx ]]; then port=$P_NGINX pid=$nginx_pid; else port=$P_OURS pid=$ours_pid; fi
  for _ in $(seq 100); do curl -skf -o /dev/null "https://127.0.0.1:$port/" && break; sleep 0.1; done
  before=$(rss_kb "$pid")
  rm -f "$work/ready" "$work/stop"
  python3 - "$idle_conns" --port "$port" -n "$N" --hold 120 --ready-file "$work/ready" \
    --stop-file "$work/stop" >"$work/$t.idle.json" 2>&1 <<'EOF' &
import asyncio, functools, runpy, ssl, sys
tls = ssl.create_default_context()
tls.check_hostname = False
tls.verify_mode = ssl.CERT_NONE
asyncio.open_connection = functools.partial(asyncio.open_connection, ssl=tls)
path = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(path, run_name="__main__")
EOF
  client=$!
  for _ in $(seq 600); do [[ -f $work/ready ]] && break; sleep 0.2; done
  sleep 2
  after=$(rss_kb "$pid")
  held=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["opened"])' "$work/ready")
  awk -v t="$t" -v h="$held" -v b="$before" -v a="$after" 'BEGIN {
    printf "| %s | %d | %.1f MB | %.1f MB | %.2f |\n", t, h, b / 1024, a / 1024, (a - b) / h }'
  touch "$work/stop"
  wait "$client" || true
done
