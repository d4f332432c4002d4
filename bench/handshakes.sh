#!/usr/bin/env bash
# Handshake-bound proxy benchmark: every request on a new connection, all the way through a
# client-side plus server-side pair, so that each request costs the pair one accepted connection
# from the load generator and one new connection (with mutual TLS: one TLS handshake) between
# its two proxies. Handshakes per second on one core and CPU per handshake, for the Trellis and
# nginx mTLS pairs, with the plaintext pairs (new TCP connections only) for reference.
#
#   bench/handshakes.sh                      # 3 rounds of 5 s runs
#   DURATION=10 ROUNDS=5 bench/handshakes.sh
#
# The load generator (oha) runs with --disable-keepalive: a new connection for every request.
# The client-side proxy opens a new upstream connection for every request too:
#   trellis-pair, trellis-mtls-pair   cluster connectionPool { maxRequestsPerConnection: 1 }
#   nginx-pair, nginx-mtls-pair*      no `keepalive` in the upstream block
# The server-side proxy keeps its connections to the upstream alive (both Trellis and nginx), so
# the upstream accepts nothing per request and the new connections are the pair's own.
#
# Session resumption. Trellis's mesh TLS client (rustls' ClientConfig, resumption left at its
# default: an in-memory store of 256 servers) resumes TLS 1.3 sessions with tickets its
# server-side peer (rustls' default in-memory session cache) issues: after the first
# connection, its handshakes between the pair are resumptions (PSK with a new ECDHE; no
# certificates sent or verified, no signatures). nginx is run both ways, so that the rows compare:
#   nginx-mtls-pair        proxy_ssl_session_reuse on  (resumed, like Trellis)
#   nginx-mtls-pair-full   proxy_ssl_session_reuse off (a full handshake with both
#                          certificates verified and two signatures, every time)
#
# Every proxy runs on CPU 0 with one worker; the upstream, trellisd (the CA, idle once the
# proxies are certified) and oha share CPU 1. All proxies start first; each round runs every
# path once, direct first, the others in one order in odd rounds and reversed in even rounds.
#
# Per path and round:
#   max rate:   MAX_CONNECTIONS concurrent clients, each request on a new connection, as fast as
#               the pair answers: handshakes (= requests) per second, the proxies' CPU (user +
#               system, all threads, from schedstat) per handshake, and the connections the
#               machine accepted per request (TCP PassiveOpens from /proc/net/snmp: 1 for
#               direct, 2 for a pair whose both hops are new connections per request).
#   fixed rate: RATE req/s over CONNECTIONS clients, still a new connection per request,
#               latency-corrected; added latency against direct in the same round; CPU per
#               handshake at that rate.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-5}"
ROUNDS="${ROUNDS:-3}"
RATE="${RATE:-200}"
CONNECTIONS="${CONNECTIONS:-50}"
MAX_CONNECTIONS="${MAX_CONNECTIONS:-50}"

# shellcheck source=bench/proxy-common.sh
source bench/proxy-common.sh
# shellcheck source=bench/mtls-common.sh
source bench/mtls-common.sh
ensure_nginx
start_upstream taskset -c 1
start_ca

passive_opens() { awk '/^Tcp:/ { if (h) { print $7; exit } h = 1 }' /proc/net/snmp; }

# scenario ROUND NAME URL HOST pidfiles...
scenario() {
  local round=$1 name=$2 url=$3 host=$4; shift 4
  local files=("$@") hdr=() out="$work/$name-$round"
  [ -n "$host" ] && hdr=(-H "host: $host")
  taskset -c 1 "$OHA" --no-tui --disable-keepalive -n 1000 -c 20 "${hdr[@]}" "$url" > /dev/null
  local rate_before=0 rate_after=0 before=0 after=0
  [ ${#files[@]} -gt 0 ] && rate_before=$(cpu_of "${files[@]}")
  taskset -c 1 "$OHA" --no-tui --disable-keepalive --output-format json -z "${DURATION}s" -c "$CONNECTIONS" \
    -q "$RATE" --latency-correction "${hdr[@]}" "$url" > "$out-rate.json"
  [ ${#files[@]} -gt 0 ] && rate_after=$(cpu_of "${files[@]}")
  [ ${#files[@]} -gt 0 ] && before=$(cpu_of "${files[@]}")
  local opens_before opens_after
  opens_before=$(passive_opens)
  taskset -c 1 "$OHA" --no-tui --disable-keepalive --output-format json -z "${DURATION}s" \
    -c "$MAX_CONNECTIONS" "${hdr[@]}" "$url" > "$out-max.json"
  opens_after=$(passive_opens)
  [ ${#files[@]} -gt 0 ] && after=$(cpu_of "${files[@]}")
  echo "$before $after $rate_before $rate_after $((opens_after - opens_before))" > "$out.res"
}

# NAME|URL|HOST|pidfiles, in the order they run within a round.
paths=("direct|http://127.0.0.1:$UP/||")

server_config "$work/trellis-server.yaml" 0
trellis_proxy trellis-server "$work/trellis-server.yaml" 18200
client_config "$work/trellis-client.yaml" 18201 0 1
trellis_proxy trellis-client "$work/trellis-client.yaml" 18300
paths+=("trellis-pair|http://127.0.0.1:18300/|bench:$UP|$work/trellis-client.pids $work/trellis-server.pids")

server_config "$work/trellis-mtls-server.yaml" 1
trellis_proxy trellis-mtls-server "$work/trellis-mtls-server.yaml" 19400 server
client_config "$work/trellis-mtls-client.yaml" 19401 1 1
trellis_proxy trellis-mtls-client "$work/trellis-mtls-client.yaml" 19500 client
paths+=("trellis-mtls-pair|http://127.0.0.1:19500/|bench:$UP|$work/trellis-mtls-client.pids $work/trellis-mtls-server.pids")

if command -v nginx > /dev/null; then
  nginx_plain nginx-server 18502 $UP 1
  nginx_plain nginx-client 18501 18502 0
  paths+=("nginx-pair|http://127.0.0.1:18501/||$work/nginx-client.pids $work/nginx-server.pids")
  nginx_certs
  nginx_mtls_server nginx-mtls-server 19602
  nginx_mtls_client nginx-mtls-client 19601 19602 0 on
  paths+=("nginx-mtls-pair|http://127.0.0.1:19601/||$work/nginx-mtls-client.pids $work/nginx-mtls-server.pids")
  nginx_mtls_server nginx-mtls-full-server 19702
  nginx_mtls_client nginx-mtls-full-client 19701 19702 0 off
  paths+=("nginx-mtls-pair-full|http://127.0.0.1:19701/||$work/nginx-mtls-full-client.pids $work/nginx-mtls-full-server.pids")
else
  echo "nginx is not installed: no nginx rows" >&2
fi

for path in "${paths[@]}"; do echo "${path%%|*}" >> "$work/order"; done
for round in $(seq "$ROUNDS"); do
  order=("${paths[@]:1}")
  if [ $((round % 2)) = 0 ]; then
    order=()
    for ((i = ${#paths[@]} - 1; i >= 1; i--)); do order+=("${paths[i]}"); done
  fi
  for path in "${paths[0]}" "${order[@]}"; do
    IFS='|' read -r name url host files <<< "$path"
    # shellcheck disable=SC2086 # the pid files are a space-separated list
    scenario "$round" "$name" "$url" "$host" $files
  done
done

python3 - "$work" "$RATE" "$CONNECTIONS" "$MAX_CONNECTIONS" "$DURATION" "$ROUNDS" <<'PY'
import json, statistics, sys
work, rate, conns, max_conns, duration, rounds = sys.argv[1:]
rounds = range(1, int(rounds) + 1)
n = len(rounds)
order = open(f"{work}/order").read().split()
med = statistics.median
def load(name, r, kind):
    return json.load(open(f"{work}/{name}-{r}-{kind}.json"))
def pct(name, r, p):
    return load(name, r, "rate")["latencyPercentiles"][p] * 1000
def res(name, r):
    return [int(x) for x in open(f"{work}/{name}-{r}.res").read().split()]
def done(name, r, kind):
    return load(name, r, kind)["summary"]["requestsPerSec"] * float(duration)
def rps(name, r):
    return load(name, r, "max")["summary"]["requestsPerSec"]
def cpu_max(name, r):  # proxy CPU µs per handshake at the max rate
    before, after, _, _, _ = res(name, r)
    return (after - before) / done(name, r, "max")
def cpu_rate(name, r):  # ... at the fixed rate
    _, _, before, after, _ = res(name, r)
    return (after - before) / done(name, r, "rate")
def accepted(name, r):  # connections accepted on the machine per request at the max rate
    return res(name, r)[4] / done(name, r, "max")
def errors(d):
    errs = {k: v for k, v in d.get("errorDistribution", {}).items() if "aborted due to deadline" not in k}
    return sum(v for code, v in d.get("statusCodeDistribution", {}).items() if not code.startswith("2")) + sum(errs.values())
print(f"Every request on a new connection (oha --disable-keepalive; the client-side proxy opens a new upstream "
      f"connection per request). Max rate: {max_conns} concurrent clients; fixed rate: {rate} req/s over {conns} "
      f"clients for {duration}s (latency-corrected). Medians of {n} rounds. Proxies on CPU 0, one worker each.\n")
print("| path | handshakes/s (max rate, one core) | proxy CPU µs / handshake at max rate | accepted connections / request | "
      "p50 ms at the fixed rate | p99 ms | added p50 | added p99 | proxy CPU µs / handshake at the fixed rate | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for name in order:
    direct = name == "direct"
    err = sum(errors(load(name, r, k)) for r in rounds for k in ("rate", "max"))
    added = {p: med(pct(name, r, p) - pct("direct", r, p) for r in rounds) for p in ("p50", "p99")}
    print(f"| {name} | {med(rps(name, r) for r in rounds):.0f} | "
          + ("–" if direct else f"{med(cpu_max(name, r) for r in rounds):.1f}")
          + f" | {med(accepted(name, r) for r in rounds):.2f} | {med(pct(name, r, 'p50') for r in rounds):.3f} | "
          + f"{med(pct(name, r, 'p99') for r in rounds):.3f} | "
          + ("– | –" if direct else f"{added['p50']:+.3f} | {added['p99']:+.3f}") + " | "
          + ("–" if direct else f"{med(cpu_rate(name, r) for r in rounds):.1f}") + f" | {err} |")
print("\nEvery round (handshakes/s; proxy CPU µs per handshake at the max rate):\n")
for name in order:
    if name == "direct":
        continue
    print(f"- {name}: " + ", ".join(f"{rps(name, r):.0f}; {cpu_max(name, r):.1f}" for r in rounds))
a = "trellis-mtls-pair"
others = [b for b in ("nginx-mtls-pair", "nginx-mtls-pair-full") if b in order]
if others:
    print(f"\n{a} against nginx, round by round (the median of the rounds' ratios):\n")
    for b in others:
        ratio = [rps(a, r) / rps(b, r) for r in rounds]
        cpu = [cpu_max(a, r) / cpu_max(b, r) for r in rounds]
        print(f"- against {b}: handshakes/s higher in {sum(1 for x in ratio if x > 1)} of {n} rounds, "
              f"{med(ratio):.0%} of nginx's; CPU per handshake at the max rate {med(cpu):.0%} of nginx's")
costs = [(m, p) for m, p in (("trellis-mtls-pair", "trellis-pair"), ("nginx-mtls-pair", "nginx-pair"),
                              ("nginx-mtls-pair-full", "nginx-pair")) if m in order and p in order]
if costs:
    print("\nThe TLS handshake's own CPU, per connection (the mTLS pair's CPU per handshake at the max rate "
          "minus the same proxies' plaintext pair's, median of the rounds' differences):\n")
for m, p in costs:
    if True:
        extra = med(cpu_max(m, r) - cpu_max(p, r) for r in rounds)
        print(f"- {m}: the TLS handshake adds {extra:.1f} µs of CPU per connection over {p}")
PY
