# Sourced by the harness scripts in this folder: a scratch folder that is removed at exit
# together with every process listed in `pids`, nginx configs, and a test certificate.
# Expects `set -euo pipefail` and `here` (the repository root) from the caller.
work=$(mktemp -d /tmp/switchyard-harness.XXXXXX)
pids=()
cleanup() {
  # SIGINT: the fast stop of Pingora, nginx and HAProxy alike (SIGTERM makes Pingora wait out
  # its grace period first).
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# nginx_conf DIR SERVER-BLOCK [CONNECTIONS] [WORKERS]: one nginx process (no master), so that
# its pid is the one doing the work, for CPU and RSS readings; with WORKERS > 1, a master and
# its workers (read the process tree).
nginx_conf() {
  local conns=${3:-4096} workers=${4:-1}
  mkdir -p "$1/tmp"
  cat >"$1/nginx.conf" <<CONF
worker_processes $workers;
master_process $( ((workers > 1)) && echo on || echo off);
worker_rlimit_nofile $((conns + 100));
pid $1/nginx.pid;
error_log $1/error.log warn;
daemon off;
events { worker_connections $conns; }
http {
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  client_body_temp_path $1/tmp/body; proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fcgi; uwsgi_temp_path $1/tmp/uwsgi; scgi_temp_path $1/tmp/scgi;
  $2
}
CONF
}

# edge_cert: a self-signed ECDSA P-256 certificate for localhost in $work/edge.{crt,key}.
edge_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$work/edge.key" -out "$work/edge.crt" 2>/dev/null
}
