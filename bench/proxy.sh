#!/usr/bin/env bash
# Proxy benchmark: the same HTTP/1.1 load sent direct, through one Trellis proxy, through a
# client-side plus server-side Trellis pair (the mesh path), plaintext and with the mesh's mutual
# TLS between the two, and through nginx and HAProxy (single and pair) configured as equivalent
# keep-alive reverse proxies, nginx's pair also with mutual TLS between its hops.
#
#   bench/proxy.sh                          # 3 rounds of 5 s runs, 1,000 req/s with 100 connections
#   DURATION=20 RATE=2000 ROUNDS=1 bench/proxy.sh
#   FLOOR=1 bench/proxy.sh                  # also hyper's floor (proxy/examples/hyper-floor.rs), single and pair
#   PGO=1 bench/proxy.sh                    # also the profile-guided build (scripts/build-pgo.sh)
#   PGO_PROXY=target/pgo/release/trellis-proxy bench/proxy.sh   # ... already built
#
# All proxies start first; then each round runs every path once (direct first, the proxies in
# one order in odd rounds and the reverse in even rounds), so a burst of noise from the VM's
# host lands on one round and not on one path, and no path always runs after the same one.
# The table shows each figure's median over the rounds (added latency is taken within a round,
# against that round's direct run); the lines below it show every round's added p50 / p99 and
# max req/s.
#
# Every proxy runs on CPU 0 with one worker (Trellis --concurrency 1, nginx worker_processes 1,
# HAProxy nbthread 1): "one core". The upstream (a small hyper server, proxy/examples/
# bench-upstream.rs) and the load generator (oha, installed with cargo when missing) share CPU 1.
# nginx and HAProxy rows appear when they are installed (apt-get install nginx-light haproxy);
# as root the script installs nginx-light itself when it is missing.
#
# The mTLS pairs (MTLS=0 leaves them out):
#   trellis-mtls-pair  the Trellis pair with identities: trellisd (release build) runs on loopback
#                      as the CA only (file mode, a static token file with the accounts
#                      bench/client and bench/server); each proxy is certified through Istio's
#                      CreateCertificate (--ca-address, --ca-root-cert, --token-file,
#                      SERVICE_ACCOUNT, POD_NAMESPACE) and waited for until /healthz/ready says
#                      200; the client's endpoint has meshTls and the server's identity, the
#                      server is STRICT. Pooled, kept-alive TLS connections between the two.
#   nginx-mtls-pair    nginx to nginx over TLS 1.3 with client certificates (an EC P-256 CA and
#                      two leaves made with openssl; ssl_verify_client on, proxy_ssl_certificate,
#                      proxy_ssl_verify on, session reuse on, upstream keepalive 256).
#
# Two runs per scenario:
#   fixed rate: RATE req/s over CONNECTIONS keep-alive connections, latency-corrected
#               percentiles; "added" = the scenario's percentile minus the direct one;
#               RSS is the proxies' peak resident memory (per proxy) during this run; their CPU
#               time per request (all threads, from schedstat) at this rate, where caches are
#               cold between requests and which the added latency follows.
#   max rate:   MAX_CONNECTIONS connections as fast as possible: req/s on one core, and the
#               proxies' CPU seconds (user + system, all processes) per 1,000 requests.
# Below the table: how many rounds each pair beat the nginx pair in, at p50 and p99, and the
# median of the rounds' differences (paired by round, so a round's noise cancels out); the same
# for the Trellis mTLS pair against the nginx mTLS pair, with CPU per request at the fixed rate;
# and what mutual TLS costs each pair in CPU per request over its plaintext self.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-5}"
ROUNDS="${ROUNDS:-3}"
RATE="${RATE:-1000}"
CONNECTIONS="${CONNECTIONS:-100}"
MAX_CONNECTIONS="${MAX_CONNECTIONS:-50}"

# shellcheck source=bench/proxy-common.sh
source bench/proxy-common.sh
MTLS="${MTLS:-1}"
if [ "$MTLS" = 1 ]; then
  # shellcheck source=bench/mtls-common.sh
  source bench/mtls-common.sh
  ensure_nginx
fi
start_upstream taskset -c 1

# PGO=1: also the profile-guided build (scripts/build-pgo.sh, about ten minutes), or the one at
# PGO_PROXY when given, as rows trellis-pgo and trellis-pgo-pair.
if [ -n "${PGO_PROXY:-}" ]; then
  PGO_PROXY=$(realpath "$PGO_PROXY")
elif [ -n "${PGO:-}" ]; then
  PGO_PROXY=$(scripts/build-pgo.sh)
fi

# trellis NAME ENDPOINT_PORT BASE [BINARY]: see start_trellis; on CPU 0 like every proxy here.
trellis() {
  start_trellis "$1" "$2" "$3" "${4:-$PROXY}" taskset -c 0
}

haproxy_proxy() {
  local name=$1 listen=$2 to=$3
  cat > "$work/$name.cfg" <<CONF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:$listen
  default_backend b
backend b
  server s1 127.0.0.1:$to
CONF
  taskset -c 0 haproxy -f "$work/$name.cfg" -db > /dev/null 2>&1 &
  pids+=($!)
  echo $! > "$work/$name.pids"
  wait_port "$listen"
}

rss_of() { # the largest peak RSS (KiB) of one proxy instance among the files given
  local best=0
  for f in "$@"; do
    local sum=0
    for p in $(cat "$f"); do sum=$((sum + $(awk '/VmHWM/ {print $2}' "/proc/$p/status"))); done
    [ "$sum" -gt "$best" ] && best=$sum
  done
  echo "$best"
}

active_opens() { awk '/^Tcp:/ { if (h) { print $6; exit } h = 1 }' /proc/net/snmp; }

# scenario ROUND NAME URL HOST pidfiles...
scenario() {
  local round=$1 name=$2 url=$3 host=$4; shift 4
  local files=("$@") hdr=() out="$work/$name-$round"
  [ -n "$host" ] && hdr=(-H "host: $host")
  # Warm the connection pools, then measure.
  taskset -c 1 "$OHA" --no-tui -n 2000 -c 20 "${hdr[@]}" "$url" > /dev/null
  local rate_before=0 rate_after=0
  [ ${#files[@]} -gt 0 ] && rate_before=$(cpu_of "${files[@]}")
  # TCP connections opened on the machine during the fixed-rate run: the load generator's own,
  # plus any a pair's client-side proxy opens to its server-side proxy (with mTLS, handshakes).
  local opens_before opens_after
  opens_before=$(active_opens)
  taskset -c 1 "$OHA" --no-tui --output-format json -z "${DURATION}s" -c "$CONNECTIONS" -q "$RATE" \
    --latency-correction "${hdr[@]}" "$url" > "$out-rate.json"
  opens_after=$(active_opens)
  [ ${#files[@]} -gt 0 ] && rate_after=$(cpu_of "${files[@]}")
  # Peak RSS at the fixed rate: read before any max-rate run has pushed it up.
  local rss=0; [ ${#files[@]} -gt 0 ] && [ "$round" = 1 ] && rss=$(rss_of "${files[@]}")
  local before=0 after=0
  [ ${#files[@]} -gt 0 ] && before=$(cpu_of "${files[@]}")
  taskset -c 1 "$OHA" --no-tui --output-format json -z "${DURATION}s" -c "$MAX_CONNECTIONS" \
    "${hdr[@]}" "$url" > "$out-max.json"
  [ ${#files[@]} -gt 0 ] && after=$(cpu_of "${files[@]}")
  echo "$before $after $rss $rate_before $rate_after $((opens_after - opens_before))" > "$out.res"
}

# NAME|URL|HOST|pidfiles, in the order they run within a round.
paths=("direct|http://127.0.0.1:$UP/||")
trellis trellis 18080 18100
paths+=("trellis|http://127.0.0.1:18100/|bench:$UP|$work/trellis.pids")
trellis trellis-server 18080 18200
trellis trellis-client 18201 18300   # its endpoint: the server-side proxy's inbound port
paths+=("trellis-pair|http://127.0.0.1:18300/|bench:$UP|$work/trellis-client.pids $work/trellis-server.pids")
if [ "$MTLS" = 1 ]; then
  start_ca
  server_config "$work/trellis-mtls-server.yaml" 1
  trellis_proxy trellis-mtls-server "$work/trellis-mtls-server.yaml" 19400 server
  client_config "$work/trellis-mtls-client.yaml" 19401 1 0
  trellis_proxy trellis-mtls-client "$work/trellis-mtls-client.yaml" 19500 client
  paths+=("trellis-mtls-pair|http://127.0.0.1:19500/|bench:$UP|$work/trellis-mtls-client.pids $work/trellis-mtls-server.pids")
fi
if [ -n "${PGO_PROXY:-}" ]; then
  trellis trellis-pgo 18080 19100 "$PGO_PROXY"
  paths+=("trellis-pgo|http://127.0.0.1:19100/|bench:$UP|$work/trellis-pgo.pids")
  trellis trellis-pgo-server 18080 19200 "$PGO_PROXY"
  trellis trellis-pgo-client 19201 19300 "$PGO_PROXY"
  paths+=("trellis-pgo-pair|http://127.0.0.1:19300/|bench:$UP|$work/trellis-pgo-client.pids $work/trellis-pgo-server.pids")
fi
if [ -n "${FLOOR:-}" ]; then
  # hyper's floor, single and pair: what any proxy built on hyper and tokio costs at least.
  floor_proxy floor 18801 $UP
  floor_proxy floor-server 18902 $UP
  floor_proxy floor-client 18901 18902
  paths+=("floor|http://127.0.0.1:18801/||$work/floor.pids")
  paths+=("floor-pair|http://127.0.0.1:18901/||$work/floor-client.pids $work/floor-server.pids")
fi
if command -v nginx > /dev/null; then
  nginx_proxy nginx 18401 $UP
  nginx_proxy nginx-server 18502 $UP
  nginx_proxy nginx-client 18501 18502
  paths+=("nginx|http://127.0.0.1:18401/||$work/nginx.pids")
  paths+=("nginx-pair|http://127.0.0.1:18501/||$work/nginx-client.pids $work/nginx-server.pids")
  if [ "$MTLS" = 1 ]; then
    nginx_certs
    nginx_mtls_server nginx-mtls-server 19602
    nginx_mtls_client nginx-mtls-client 19601 19602 1 on
    paths+=("nginx-mtls-pair|http://127.0.0.1:19601/||$work/nginx-mtls-client.pids $work/nginx-mtls-server.pids")
  fi
fi
if command -v haproxy > /dev/null; then
  haproxy_proxy haproxy 18601 $UP
  haproxy_proxy haproxy-server 18702 $UP
  haproxy_proxy haproxy-client 18701 18702
  paths+=("haproxy|http://127.0.0.1:18601/||$work/haproxy.pids")
  paths+=("haproxy-pair|http://127.0.0.1:18701/||$work/haproxy-client.pids $work/haproxy-server.pids")
fi
for path in "${paths[@]}"; do echo "${path%%|*}" >> "$work/order"; done
for round in $(seq "$ROUNDS"); do
  # Direct first (each round's baseline), then the proxies forward in odd rounds and backward in
  # even ones: a path's place in the round (what ran just before it, a drift over the round)
  # falls on every path alike instead of favouring whichever comes later.
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
order = open(f"{work}/order").read().split()
def load(name, r, kind):
    return json.load(open(f"{work}/{name}-{r}-{kind}.json"))
def pct(d, p):
    return d["latencyPercentiles"][p] * 1000
def non2xx(d):
    # Requests still in flight when a timed run ends are cut off by oha itself: not errors.
    errors = {k: n for k, n in d.get("errorDistribution", {}).items() if "aborted due to deadline" not in k}
    return sum(n for code, n in d.get("statusCodeDistribution", {}).items() if not code.startswith("2")) + sum(errors.values())
def res(name, r):
    return [int(x) for x in open(f"{work}/{name}-{r}.res").read().split()]
def cpu_per_1k(name, r): # CPU seconds per 1,000 requests at the max rate
    before, after = res(name, r)[:2]
    done = load(name, r, "max")["summary"]["requestsPerSec"] * float(duration)
    return (after - before) / 1e6 / done * 1000 if done else 0
def cpu_us_at_rate(name, r): # CPU microseconds per request at the fixed rate (cold caches)
    before, after = res(name, r)[3:5]
    done = load(name, r, "rate")["summary"]["requestsPerSec"] * float(duration)
    return (after - before) / done if done else 0
med = statistics.median
print(f"Fixed rate: {rate} req/s over {conns} connections for {duration}s (latency-corrected); max rate: {max_conns} connections.")
print(f"Medians of {len(rounds)} rounds. Added latency = the path's percentile minus the direct run's in the same round.")
print("Proxies on CPU 0, one worker each.\n")
print("| path | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 | added p99 | errors | proxy CPU µs / req at the fixed rate | max req/s (one core) | proxy CPU s / 1k req at max rate | peak RSS per proxy MiB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
per_round = {}
for name in order:
    cols = [f"{med(pct(load(name, r, 'rate'), p) for r in rounds):.3f}" for p in ("p50", "p90", "p99", "p99.9")]
    added = {p: [pct(load(name, r, "rate"), p) - pct(load("direct", r, "rate"), p) for r in rounds] for p in ("p50", "p99")}
    maxes = [load(name, r, "max")["summary"]["requestsPerSec"] for r in rounds]
    errors = sum(non2xx(load(name, r, "rate")) + non2xx(load(name, r, "max")) for r in rounds)
    rss = res(name, 1)[2]
    per_round[name] = (added, maxes)
    direct = name == "direct"
    print(f"| {name} | {' | '.join(cols)} | "
          + (" | ".join("–" for _ in range(2)) if direct else " | ".join(f"{med(added[p]):+.3f}" for p in ("p50", "p99")))
          + f" | {errors} | "
          + ("–" if direct else f"{med(cpu_us_at_rate(name, r) for r in rounds):.1f}")
          + f" | {med(maxes):.0f} | "
          + ("–" if direct else f"{med(cpu_per_1k(name, r) for r in rounds):.3f}") + " | "
          + ("–" if direct else f"{rss / 1024:.1f}") + " |")
print("\nEvery round (added p50 / added p99 ms; max req/s):\n")
for name in order:
    if name == "direct":
        continue
    added, maxes = per_round[name]
    rows = ", ".join(f"{a:+.3f} / {b:+.3f}; {m:.0f}" for a, b, m in zip(added["p50"], added["p99"], maxes))
    print(f"- {name}: {rows}")
# The pair target is a comparison within each round: say how often it held, not only the medians.
if "nginx-pair" in order:
    # Paired by round, so that the noise a round shares with the nginx pair cancels out:
    # the median of the rounds' differences, and of the rounds' max req/s ratios.
    print("\nPairs against the nginx pair, round by round (lower added latency wins; the median of "
          "the rounds' differences in ms, and of their max req/s ratios):\n")
    for name in order:
        if name.endswith("-pair") and name != "nginx-pair" and "mtls" not in name:
            diff = {p: [pct(load(name, r, "rate"), p) - pct(load("nginx-pair", r, "rate"), p) for r in rounds] for p in ("p50", "p99")}
            wins = {p: sum(1 for d in diff[p] if d < 0) for p in diff}
            ratio = med(load(name, r, "max")["summary"]["requestsPerSec"] / load("nginx-pair", r, "max")["summary"]["requestsPerSec"] for r in rounds)
            print(f"- {name}: p50 lower in {wins['p50']} of {len(rounds)} rounds ({med(diff['p50']):+.3f}), "
                  f"p99 lower in {wins['p99']} of {len(rounds)} ({med(diff['p99']):+.3f}); max req/s {ratio:.0%} of the nginx pair's")
PY

python3 - "$work" "$DURATION" "$ROUNDS" <<'PY'
# The mTLS pairs: the Trellis mTLS pair against nginx's, round by round, and what mutual TLS
# costs each pair in CPU per request over its own plaintext pair.
import json, statistics, sys
work, duration, rounds = sys.argv[1:]
rounds = range(1, int(rounds) + 1)
order = open(f"{work}/order").read().split()
med = statistics.median
def load(name, r, kind):
    return json.load(open(f"{work}/{name}-{r}-{kind}.json"))
def pct(name, r, p):
    return load(name, r, "rate")["latencyPercentiles"][p] * 1000
def res(name, r):
    return [int(x) for x in open(f"{work}/{name}-{r}.res").read().split()]
def cpu_us_at_rate(name, r):
    before, after = res(name, r)[3:5]
    done = load(name, r, "rate")["summary"]["requestsPerSec"] * float(duration)
    return (after - before) / done if done else 0
def cpu_us_at_max(name, r):
    before, after = res(name, r)[:2]
    done = load(name, r, "max")["summary"]["requestsPerSec"] * float(duration)
    return (after - before) / done if done else 0
n = len(rounds)
if "trellis-mtls-pair" in order and "nginx-mtls-pair" in order:
    a, b = "trellis-mtls-pair", "nginx-mtls-pair"
    print("\nThe Trellis mTLS pair against the nginx mTLS pair, round by round (lower wins; the median "
          "of the rounds' differences, and of their max req/s ratios):\n")
    diff = {p: [pct(a, r, p) - pct(b, r, p) for r in rounds] for p in ("p50", "p99")}
    cpu = [cpu_us_at_rate(a, r) - cpu_us_at_rate(b, r) for r in rounds]
    ratio = med(load(a, r, "max")["summary"]["requestsPerSec"] / load(b, r, "max")["summary"]["requestsPerSec"] for r in rounds)
    wins = lambda xs: sum(1 for x in xs if x < 0)
    print(f"- added p50 lower in {wins(diff['p50'])} of {n} rounds ({med(diff['p50']):+.3f} ms), "
          f"added p99 lower in {wins(diff['p99'])} of {n} ({med(diff['p99']):+.3f} ms); "
          f"CPU per request at the fixed rate lower in {wins(cpu)} of {n} ({med(cpu):+.1f} µs); "
          f"max req/s {ratio:.0%} of the nginx mTLS pair's")
pairs = [(m, p) for m, p in (("trellis-mtls-pair", "trellis-pair"), ("nginx-mtls-pair", "nginx-pair"))
         if m in order and p in order]
if pairs:
    print("\nWhat mutual TLS costs, in CPU per request over the same proxies' plaintext pair (per round: "
          "mTLS / plaintext - 1; the median of the rounds):\n")
    for m, p in pairs:
        at_rate = [cpu_us_at_rate(m, r) / cpu_us_at_rate(p, r) - 1 for r in rounds]
        at_max = [cpu_us_at_max(m, r) / cpu_us_at_max(p, r) - 1 for r in rounds]
        rows = ", ".join(f"{cpu_us_at_rate(m, r):.1f} vs {cpu_us_at_rate(p, r):.1f} µs ({x:+.1%})" for r, x in zip(rounds, at_rate))
        print(f"- {m} over {p}: {med(at_rate):+.1%} at the fixed rate ({rows}); {med(at_max):+.1%} at the max rate")
    # New connections (and so, with mTLS, handshakes) inside the fixed-rate runs, beyond the load
    # generator's own (the direct run's count in the same round): a pool that grows mid-run.
    print("\nConnections the pair opened during each round's fixed-rate run (TCP active opens beyond the "
          "direct run's): " + "; ".join(
              f"{m} " + ", ".join(str(res(m, r)[5] - res("direct", r)[5]) for r in rounds)
              for m in [x for x in order if x.endswith("-pair")]))
PY
