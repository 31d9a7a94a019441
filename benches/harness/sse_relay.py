"""What switchyard itself adds to SSE streams, read off a loopback capture.

Input: tshark fields on stdin (see sse_relay.sh): time, tcp stream, source port, destination
port, tcp.len, request method, response code, request header lines, response header lines.
Per stream it finds the client's request, the upstream request, the upstream response head
and first event, and the client's response head and first event. Client and upstream sides
are paired by the x-request-id that switchyard adds to the upstream request and to the
client's answer. Prints a markdown table for the whole run and for its steady state (after
the opening burst, before the end).
"""
import collections
import sys

proxy_port, up_port = int(sys.argv[1]), int(sys.argv[2])
steady_from, steady_to = float(sys.argv[3]), float(sys.argv[4])

# (tcp stream, side) -> exchanges: [request time, head time, first data time, request id]
exchanges = collections.defaultdict(list)
for line in sys.stdin:
    f = line.rstrip("\n").split("\t")
    if len(f) < 9:
        continue
    t, stream, src, dst, tlen, method, code = f[:7]
    t, src, dst, tlen = float(t), int(src), int(dst), int(tlen or 0)
    lines = (f[7] + "|" + f[8]).split("|")
    rid = next((l.split(":", 1)[1].strip() for l in lines
                if l.lower().startswith("x-request-id:")), "")
    from_server = src in (proxy_port, up_port)
    side = up_port if up_port in (src, dst) else proxy_port
    ours = exchanges[(stream, side)]
    if method and not from_server:
        ours.append([t, None, None, rid])
    elif code and from_server and ours and ours[-1][1] is None:
        ours[-1][1] = t
        ours[-1][3] = rid or ours[-1][3]
    elif from_server and tlen > 0 and ours and ours[-1][1] is not None and ours[-1][2] is None:
        ours[-1][2] = t

upstream = {e[3]: e for (_, side), es in exchanges.items() if side == up_port for e in es if e[3]}
start = min(e[0] for es in exchanges.values() for e in es)
streams = []  # (seconds into the run, request relayed, head relayed, first event relayed)
for (_, side), es in exchanges.items():
    if side != proxy_port:
        continue
    for c in es:
        u = upstream.get(c[3])
        if u and None not in c[:3] and None not in u[:3]:
            streams.append((c[0] - start, (u[0] - c[0]) * 1e3, (c[1] - u[1]) * 1e3,
                            (c[2] - u[2]) * 1e3))


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def table(title, rows):
    print(f"\n{title}: {len(rows)} streams\n")
    print("| ms | p50 | p99 | max |")
    print("|---|---|---|---|")
    named = (("request relayed (client request → upstream request)", [r[1] for r in rows]),
             ("head relayed (upstream head → client head)", [r[2] for r in rows]),
             ("first event relayed (upstream → client)", [r[3] for r in rows]),
             ("added to the first event (request + event relayed)", [r[1] + r[3] for r in rows]))
    for name, v in named:
        print(f"| {name} | {pct(v, 50):.3f} | {pct(v, 99):.3f} | {max(v):.3f} |")


table("whole run", streams)
table(f"steady state ({steady_from:g}–{steady_to:g} s into the capture)",
      [s for s in streams if steady_from <= s[0] <= steady_to])
late = collections.Counter(int(s[0]) for s in streams if s[1] > 2 or s[2] > 2)
print("\nstreams with a relay over 2 ms, by second into the capture: "
      + ", ".join(f"{sec} s: {n}" for sec, n in sorted(late.items())))
