#!/usr/bin/env bash
# What switchyard itself adds to SSE streams: runs ../shared/bench/compare.sh sse against
# switchyard alone while tcpdump (on cpu0, away from the proxy) records the proxy's client and
# upstream ports, then sse_relay.py pairs each client stream with its upstream stream and
# reports how long the proxy took to relay the request, the response head and the first
# event. Needs tcpdump, tshark and what compare.sh needs; run as root.
#   benches/harness/sse_relay.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
compare=${COMPARE:-$here/../shared/bench/compare.sh}
PROXY_PORT=18080                 # PROXY_URL below
UP_PORT=$((${PORT_BASE:-18080} + 2))  # compare.sh's SSE upstream
pcap=$(mktemp /tmp/switchyard-sse-relay.XXXXXX.pcap)
trap 'rm -f "$pcap"' EXIT
taskset -c 0 tcpdump -i lo -s 2048 -w "$pcap" "tcp port $PROXY_PORT or tcp port $UP_PORT" 2>/dev/null &
dump=$!
sleep 1
PROXY_CMD=$here/benches/harness/switchyard.sh PROXY_URL=http://127.0.0.1:$PROXY_PORT \
  TARGETS=ours ROUNDS=1 OUT_DIR=${OUT_DIR:-/tmp/switchyard-sse-relay} \
  bash "$compare" sse >&2 || true
kill -INT "$dump"
wait "$dump" || true
tshark -r "$pcap" -o http.desegment_body:FALSE -d "tcp.port==$PROXY_PORT,http" \
  -d "tcp.port==$UP_PORT,http" -Y "tcp.len>0" -T fields -E aggregator='|' \
  -e frame.time_epoch -e tcp.stream -e tcp.srcport -e tcp.dstport -e tcp.len \
  -e http.request.method -e http.response.code -e http.request.line -e http.response.line \
  2>/dev/null | python3 "$here/benches/harness/sse_relay.py" "$PROXY_PORT" "$UP_PORT" 3 11
