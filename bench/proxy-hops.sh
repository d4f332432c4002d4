#!/usr/bin/env bash
# Where a pair's added latency goes, hop by hop. At the fixed rate of bench/proxy.sh, perf
# records every system call of the client-side and the server-side proxy (raw_syscalls
# tracepoints), for the Trellis pair, hyper's floor pair and the nginx pair (when installed).
# Needs root and perf.
#
#   bench/proxy-hops.sh
#   PGO_PROXY=target/pgo/release/trellis-proxy bench/proxy-hops.sh   # also the profile-guided build
#   ROUNDS=3 TRACED=3 bench/proxy-hops.sh
#
# Columns (µs, the median over the rounds of each run's median):
#   wake → forward   from the proxy's wake-up (epoll_wait returns) to the write that passes the
#                    message on: reading it, the proxy's own work, any other system call;
#                    request side and response side, for each proxy of the pair
#   hand-over        from one proxy's write to the other's wake-up: both run on CPU 0, so this
#                    is the writer finishing (its tail) plus the switch
#   write off / on   one write's time in the kernel, to CPU 1 (the load generator, the upstream:
#                    waking an idle CPU) and within CPU 0 (the other proxy)
#   calls / wake-up  system calls between two epoll_wait calls
# Tracing makes every system call slower, so compare rows with each other, not with
# bench/proxy.sh; the user-space part shows in "wake → forward".
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-3}"
TRACED="${TRACED:-3}"
RATE="${RATE:-1000}"
CONNECTIONS="${CONNECTIONS:-100}"
command -v perf > /dev/null || { echo "perf is not installed" >&2; exit 1; }

# shellcheck source=bench/proxy-common.sh
source bench/proxy-common.sh
start_upstream taskset -c 1

# Each pair: NAME|client port|server port|client pid file|server pid file.
start_trellis trellis-server "$UP" 18200 "$PROXY" taskset -c 0
start_trellis trellis-client 18201 18300 "$PROXY" taskset -c 0
pairs=("trellis|18300|18201|$work/trellis-client.pids|$work/trellis-server.pids")
if [ -n "${PGO_PROXY:-}" ]; then
  start_trellis trellis-pgo-server "$UP" 19200 "$(realpath "$PGO_PROXY")" taskset -c 0
  start_trellis trellis-pgo-client 19201 19300 "$(realpath "$PGO_PROXY")" taskset -c 0
  pairs+=("trellis-pgo|19300|19201|$work/trellis-pgo-client.pids|$work/trellis-pgo-server.pids")
fi
floor_proxy floor-server 18902 "$UP"
floor_proxy floor-client 18901 18902
pairs+=("floor|18901|18902|$work/floor-client.pids|$work/floor-server.pids")
if command -v nginx > /dev/null; then
  nginx_proxy nginx-server 18502 "$UP"
  nginx_proxy nginx-client 18501 18502
  pairs+=("nginx|18501|18502|$work/nginx-client.pids|$work/nginx-server.pids")
fi

# The fds of the processes in pid file $1 that are connected to port $2.
fds_to() {
  local p
  for p in $(cat "$1"); do
    ss -tnpH state established "( dport = :$2 )" | grep -o "pid=$p,fd=[0-9]*" | sed 's/.*fd=//'
  done | tr '\n' ' '
}

for round in $(seq "$ROUNDS"); do
  order=("${pairs[@]}")
  if [ $((round % 2)) = 0 ]; then
    order=()
    for ((i = ${#pairs[@]} - 1; i >= 0; i--)); do order+=("${pairs[i]}"); done
  fi
  for pair in "${order[@]}"; do
    IFS='|' read -r name port next client server <<< "$pair"
    out="$work/$name-$round"
    taskset -c 1 "$OHA" --no-tui -z 2s -c "$CONNECTIONS" -q "$RATE" -H "host: bench:$UP" \
      "http://127.0.0.1:$port/" > /dev/null
    echo "$(cat "$client") | $(fds_to "$client" "$next")" > "$out.client"
    echo "$(cat "$server") | $(fds_to "$server" "$UP")" > "$out.server"
    perf record -q -e raw_syscalls:sys_enter -e raw_syscalls:sys_exit -o "$out.data" \
      -p "$(cat "$client" "$server" | tr -s ' \n' ',' | sed 's/,$//')" -- sleep $((TRACED + 1)) \
      2> /dev/null &
    tracer=$!
    taskset -c 1 "$OHA" --no-tui -z "${TRACED}s" -c "$CONNECTIONS" -q "$RATE" \
      --latency-correction -H "host: bench:$UP" "http://127.0.0.1:$port/" > /dev/null
    wait "$tracer" || true
    perf script -i "$out.data" -F pid,tid,time,event,trace --ns > "$out.txt" 2> /dev/null
    rm -f "$out.data"
  done
done

python3 - "$work" "$ROUNDS" "${pairs[@]}" <<'PY'
import re, statistics, sys
work, rounds, pairs = sys.argv[1], int(sys.argv[2]), [p.split("|")[0] for p in sys.argv[3:]]
WRITES = {1, 20, 44}  # write, writev, sendto
WAITS = {232, 281}    # epoll_wait, epoll_pwait
LINE = re.compile(r"\s*(\d+)/(\d+)\s+(\d+\.\d+):\s+raw_syscalls:sys_(enter|exit): NR (\d+)(?: \(([0-9a-f]+),)?")

def side(path, label):
    pids, fds = open(path).read().split("|")
    return {int(p): (label, {int(f) for f in fds.split()}) for p in pids.split()}

def one_run(base):
    role = side(f"{base}.client", "client") | side(f"{base}.server", "server")
    series = {}
    add = lambda key, value: series.setdefault(key, []).append(value)
    # By thread: only the thread that waits in epoll_wait carries requests (a Trellis blocking
    # thread's calls, e.g. the config watcher's, are left out).
    state = {}
    handed = {}  # writer -> when its write to the other proxy returned
    for line in open(f"{base}.txt"):
        m = LINE.match(line)
        if not m or int(m[1]) not in role:
            continue
        who, upstream_fds = role[int(m[1])]
        other = "server" if who == "client" else "client"
        t, kind, nr = float(m[3]) * 1e6, m[4], int(m[5])
        s = state.setdefault(int(m[2]), {"woke": None, "calls": 0, "write": None})
        if nr in WAITS:
            if kind == "exit":
                s["woke"], s["calls"] = t, 0
                if handed.get(other) is not None:
                    add(f"hand-over {other} → {who}", t - handed.pop(other))
            elif s["woke"] is not None:
                add("calls / wake-up", s["calls"])
                s["woke"] = None
            continue
        if s["woke"] is None:
            continue
        if kind == "enter":
            s["calls"] += 1
            if nr in WRITES:
                fd = int(m[6], 16) if m[6] else -1
                forward = fd in upstream_fds
                add(f"{who} {'request' if forward else 'response'}: wake → forward", t - s["woke"])
                # The client side's upstream and the server side's downstream are the other
                # proxy, on the same CPU; the rest is on CPU 1.
                s["write"] = (t, (who == "client") == forward)
        elif nr in WRITES and s["write"] is not None:
            start, same_cpu = s["write"]
            add("write on CPU 0" if same_cpu else "write to CPU 1", t - start)
            if same_cpu:
                handed[who] = t
            s["write"] = None
    return {k: statistics.median(v) for k, v in series.items()}

columns = ["client request: wake → forward", "server request: wake → forward",
           "server response: wake → forward", "client response: wake → forward",
           "hand-over client → server", "hand-over server → client",
           "write to CPU 1", "write on CPU 0", "calls / wake-up"]
print(f"Syscall trace at the fixed rate; medians of {rounds} rounds (µs; calls per wake-up).")
print("| pair | " + " | ".join(columns) + " | own part (sum of the first six) |")
print("|---" + "|---:" * (len(columns) + 1) + "|")
for name in pairs:
    runs = [one_run(f"{work}/{name}-{r}") for r in range(1, rounds + 1)]
    values = [statistics.median(run.get(c, float("nan")) for run in runs) for c in columns]
    own = sum(values[:6])
    print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {own:.1f} |")
PY
