#!/usr/bin/env bash
# What an idle keep-alive connection keeps allocated, by allocation size: uprobes on the
# binary's allocator (mimalloc) while N connections open, send one request each and go idle;
# the allocations not freed by the end are listed with their count. Sizes allocated once per
# connection show up with count N. Needs perf (linux-perf), nginx, python3 and
# ../shared/bench/lib/idle_conns.py; run as root.
#   N=1000 benches/harness/idle_allocs.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=$(realpath "${SWITCHYARD_BIN:-$here/target/release/switchyard}")
idle_conns=${IDLE_CONNS:-$here/../shared/bench/lib/idle_conns.py}
N=${N:-1000}
group=probe_$(basename "$bin" | tr -c 'a-zA-Z0-9_\n' _)
P_UP=18501 P_PROXY=18502 P_ADMIN=18503
# shellcheck source=lib.sh
. "$here/benches/harness/lib.sh"
trap 'perf probe -q -d "$group:*" 2>/dev/null || true; cleanup' EXIT

for spec in 'mi_malloc_aligned size=%di:u64' 'mi_malloc_aligned%return ret=$retval:u64' \
  'mi_zalloc_aligned size=%di:u64' 'mi_zalloc_aligned%return ret=$retval:u64' \
  'mi_realloc_aligned ptr=%di:u64 size=%si:u64' 'mi_realloc_aligned%return ret=$retval:u64' \
  'mi_free ptr=%di:u64'; do
  perf probe -q -x "$bin" --add "$spec" >/dev/null
done

mkdir -p "$work/sy"
nginx_conf "$work/up" "server { listen 127.0.0.1:$P_UP backlog=4096; location / { return 200 \"ok\n\"; } }"
nginx -p "$work/up/" -c "$work/up/nginx.conf" -e "$work/up/error.log" &
pids+=($!)
BENCH_WORK=$work/sy BENCH_LISTEN=127.0.0.1:$P_PROXY BENCH_UPSTREAM=127.0.0.1:$P_UP \
  BENCH_ADMIN=127.0.0.1:$P_ADMIN RUST_LOG=warn "$bin" run -c "$here/conf/bench.yaml" >"$work/sy.log" 2>&1 &
proxy=$!
pids+=($proxy)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$P_PROXY/" && break; sleep 0.1; done

perf record -e "$group:*" -o "$work/allocs.data" -p "$proxy" >/dev/null 2>&1 &
recorder=$!
sleep 1
python3 "$idle_conns" --port "$P_PROXY" -n "$N" --parallel 1 --hold 60 \
  --ready-file "$work/ready" --stop-file "$work/stop" >/dev/null 2>&1 &
client=$!
pids+=($client)
for _ in $(seq 600); do [[ -f $work/ready ]] && break; sleep 0.2; done
sleep 2
kill -INT "$recorder"
wait "$recorder" || true
touch "$work/stop"

perf script -i "$work/allocs.data" -F tid,event,trace 2>/dev/null | python3 -c '
import collections, re, sys
n = int(sys.argv[1])
live, pending = {}, {}
for line in sys.stdin:
    m = re.match(r"\s*(\d+)\s+[\w-]+:(\w+):\s*\([^)]*\)\s*(.*)", line)
    if not m:
        continue
    tid, event, args = m.groups()
    kv = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", args)}
    if event.endswith("__return"):
        kind, size, old = pending.pop(tid, (None, 0, 0))
        if kind == "realloc":
            live.pop(old, None)
        if kind:
            live[kv["ret"]] = size
    elif event.startswith("mi_realloc"):
        pending[tid] = ("realloc", kv["size"], kv["ptr"])
    elif event.startswith(("mi_malloc", "mi_zalloc")):
        pending[tid] = ("alloc", kv["size"], 0)
    elif event == "mi_free":
        live.pop(kv["ptr"], None)
total = sum(live.values())
print(f"{n} idle connections: {total / n:,.0f} bytes allocated per connection")
print("| size (bytes) | live allocations | bytes per connection |")
print("|---|---|---|")
for size, count in sorted(collections.Counter(live.values()).items(), key=lambda kv: -kv[0] * kv[1]):
    if size * count / n >= 16:
        print(f"| {size:,} | {count:,} | {size * count / n:,.0f} |")
' "$N"
