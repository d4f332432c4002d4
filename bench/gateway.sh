#!/usr/bin/env bash
# The ingress gateway (issue 26): TLS terminated at the edge and the request forwarded into the
# mesh over mutual TLS, against nginx doing the same (TLS in, mutual TLS to the upstream), in
# the same run:
#
#   trellis-gateway   trellis-proxy --role gateway (a Gateway server: HTTPS, SIMPLE, certificate
#                     files) → mutual TLS → a Trellis sidecar (STRICT) → the upstream
#   nginx-gateway     nginx (ssl listener, the same certificate) → mutual TLS (proxy_ssl_*) →
#                     nginx terminating mutual TLS → the upstream
#   direct            the upstream over plain HTTP (the baseline of added latency)
#
#   bench/gateway.sh                      # 3 rounds of 5 s runs
#   DURATION=10 ROUNDS=5 bench/gateway.sh
#
# Both the edge and the sidecar run on CPU 0 with one worker each (as bench/proxy.sh's pairs);
# oha, the upstream and trellisd (the CA: the gateway and the sidecar are certified by it and
# then it is idle) on CPU 1. Per path and round:
#   keep-alive   max rate over MAX_CONNECTIONS kept-alive TLS connections (requests per second
#                on one core, CPU per request of the edge + sidecar), and RATE req/s over
#                CONNECTIONS for latency (added p50/p99 against direct, latency-corrected);
#   new TLS      every request on a new client connection (a TLS 1.3 handshake with the
#                edge; oha does not resume): new connections per second at the max rate and
#                CPU per new connection. The edge's connections into the mesh stay alive.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-5}"
ROUNDS="${ROUNDS:-3}"
RATE="${RATE:-1000}"
CONNECTIONS="${CONNECTIONS:-50}"
MAX_CONNECTIONS="${MAX_CONNECTIONS:-50}"

# shellcheck source=bench/proxy-common.sh
source bench/proxy-common.sh
# shellcheck source=bench/mtls-common.sh
source bench/mtls-common.sh
ensure_nginx
start_upstream taskset -c 1
start_ca
nginx_certs

# The edge's certificate for bench.example.com, signed by the bench CA (oha trusts that CA).
pki="$work/pki"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/edge.key" \
  -subj /CN=bench.example.com -out "$pki/edge.csr" 2> /dev/null
echo "subjectAltName=DNS:bench.example.com" > "$pki/edge.ext"
openssl x509 -req -in "$pki/edge.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
  -extfile "$pki/edge.ext" -out "$pki/edge.pem" 2> /dev/null
chmod 644 "$pki"/*.key

# The sidecar runs in explicit mode (no redirect): it delivers a request to 127.0.0.1 at the
# port of the request's authority. So the edge's URL carries the upstream's port: the Trellis
# edge listens on 127.0.0.2:$UP (the upstream has 127.0.0.1:$UP). Before this, the URL named the
# edge's own port, and the sidecar delivered every request back to the edge's TLS port: a new
# connection per request, refused, and a 503 for each (counted as requests: oha reports
# transport errors only, hence the status-code check below).
GW_IP=127.0.0.2
GW_PORT=$UP
NGINX_GW_PORT=18444

# The sidecar in front of the upstream: STRICT mutual TLS, the mesh identity bench/server.
server_config "$work/sidecar.yaml" 1
trellis_proxy sidecar "$work/sidecar.yaml" 19400 server

# The gateway: what trellisd sends a gateway for an Istio Gateway with one HTTPS server
# (SIMPLE, serverCertificate/privateKey files) and a VirtualService bound to it, routing
# bench.example.com to the service whose endpoint is the sidecar (mutual TLS, bench/server).
cat > "$work/gateway.yaml" <<YAML
gatewayListeners:
  - port: $GW_PORT
    bind: $GW_IP
    protocol: GATEWAY_HTTPS
    servers:
      - name: bench/edge/https
        hosts: [bench.example.com]
        tls: { mode: GATEWAY_TLS_SIMPLE, certificateFile: $pki/edge.pem, privateKeyFile: $pki/edge.key }
        routes: [{ host: bench.example.com, virtualHost: "bench:$UP" }]
services:
  - { name: bench, ports: [{ port: $UP, protocol: HTTP }] }
virtualHosts:
  - name: bench:$UP
    routes: [{ name: all, forward: { clusters: [{ cluster: bench }] } }]
clusters: [{ name: bench, service: bench }]
endpoints:
  - service: bench
    serviceAccounts: ["spiffe://cluster.local/ns/bench/sa/server"]
    endpoints: [{ address: 127.0.0.1, port: 19401, meshTls: true }]
YAML
SERVICE_ACCOUNT=client POD_NAMESPACE=bench RUST_LOG=warn taskset -c 0 "$PROXY" --role gateway \
  --config "$work/gateway.yaml" --concurrency 1 --admin-port 19502 --readiness-port 19503 \
  --stats-port 19504 --status-port 19505 --ca-address "$CA_ADDRESS" --ca-root-cert "$CA_ROOT" \
  --token-file "$work/ca/client.token" > "$work/gateway.log" 2>&1 &
pids+=($!)
echo $! > "$work/gateway.pids"
wait_ready gateway 19503
for _ in $(seq 300); do (exec 3<> "/dev/tcp/$GW_IP/$GW_PORT") 2> /dev/null && break; sleep 0.1; done

paths=("direct|http://127.0.0.1:$UP/||")
paths+=("trellis-gateway|https://bench.example.com:$GW_PORT/|bench.example.com:$GW_PORT:$GW_IP:$GW_PORT|$work/gateway.pids $work/sidecar.pids")

if command -v nginx > /dev/null; then
  nginx_mtls_server nginx-mtls-server 19602
  nginx_with nginx-gateway $NGINX_GW_PORT <<CONF
  keepalive_requests 100000;
  keepalive_timeout 300s;
  upstream up { server 127.0.0.1:19602; keepalive 256; keepalive_requests 100000; }
  server {
    listen 127.0.0.1:$NGINX_GW_PORT ssl;
    ssl_certificate $pki/edge.pem;
    ssl_certificate_key $pki/edge.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass https://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_certificate $pki/client.pem;
      proxy_ssl_certificate_key $pki/client.key;
      proxy_ssl_trusted_certificate $pki/ca.pem;
      proxy_ssl_verify on;
      proxy_ssl_name server.bench;
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_session_reuse on;
    }
  }
CONF
  paths+=("nginx-gateway|https://bench.example.com:$NGINX_GW_PORT/|bench.example.com:$NGINX_GW_PORT:127.0.0.1:$NGINX_GW_PORT|$work/nginx-gateway.pids $work/nginx-mtls-server.pids")
else
  echo "nginx is not installed: no nginx rows" >&2
fi

# scenario ROUND NAME URL CONNECT_TO pidfiles...
scenario() {
  local round=$1 name=$2 url=$3 connect=$4; shift 4
  local files=("$@") args=(--no-tui --cacert "$pki/ca.pem") out="$work/$name-$round"
  [ -n "$connect" ] && args+=(--connect-to "$connect")
  taskset -c 1 "$OHA" "${args[@]}" -n 2000 -c 20 "$url" > /dev/null
  local c0=0 c1=0 c2=0 c3=0 c4=0 c5=0
  [ ${#files[@]} -gt 0 ] && c0=$(cpu_of "${files[@]}")
  taskset -c 1 "$OHA" "${args[@]}" --output-format json -z "${DURATION}s" -c "$CONNECTIONS" \
    -q "$RATE" --latency-correction "$url" > "$out-rate.json"
  [ ${#files[@]} -gt 0 ] && c1=$(cpu_of "${files[@]}")
  [ ${#files[@]} -gt 0 ] && c2=$(cpu_of "${files[@]}")
  taskset -c 1 "$OHA" "${args[@]}" --output-format json -z "${DURATION}s" -c "$MAX_CONNECTIONS" \
    "$url" > "$out-max.json"
  [ ${#files[@]} -gt 0 ] && c3=$(cpu_of "${files[@]}")
  [ ${#files[@]} -gt 0 ] && c4=$(cpu_of "${files[@]}")
  taskset -c 1 "$OHA" "${args[@]}" --disable-keepalive --output-format json -z "${DURATION}s" \
    -c "$MAX_CONNECTIONS" "$url" > "$out-new.json"
  [ ${#files[@]} -gt 0 ] && c5=$(cpu_of "${files[@]}")
  echo "$c0 $c1 $c2 $c3 $c4 $c5" > "$out.res"
}

for path in "${paths[@]}"; do echo "${path%%|*}" >> "$work/order"; done
for round in $(seq "$ROUNDS"); do
  order=("${paths[@]:1}")
  if [ $((round % 2)) = 0 ]; then
    order=()
    for ((i = ${#paths[@]} - 1; i >= 1; i--)); do order+=("${paths[i]}"); done
  fi
  for path in "${paths[0]}" "${order[@]}"; do
    IFS='|' read -r name url connect files <<< "$path"
    # shellcheck disable=SC2086 # the pid files are a space-separated list
    scenario "$round" "$name" "$url" "$connect" $files
  done
done

python3 - "$work" "$DURATION" "$ROUNDS" "$RATE" "$CONNECTIONS" "$MAX_CONNECTIONS" <<'PY'
import json, statistics, sys
work, duration, rounds, rate, conns, max_conns = sys.argv[1:]
rounds = range(1, int(rounds) + 1)
med = statistics.median
order = open(f"{work}/order").read().split()
def load(name, r, kind):
    return json.load(open(f"{work}/{name}-{r}-{kind}.json"))
def res(name, r):
    return [int(x) for x in open(f"{work}/{name}-{r}.res").read().split()]
def pct(name, r, p):
    return load(name, r, "rate")["latencyPercentiles"][p] * 1000
def count(name, r, kind):
    s = load(name, r, kind)["summary"]
    return s["requestsPerSec"] * float(duration) * s.get("successRate", 1.0)
def errors(name, r):
    return sum(sum(load(name, r, k).get("errorDistribution", {}).values()) for k in ("rate", "max", "new"))
# oha counts any answer as a request: an edge answering 503 would look fast. Answers other than
# 200 are counted and flagged.
def not_ok(name, r):
    return sum(n for k in ("rate", "max", "new")
               for code, n in load(name, r, k).get("statusCodeDistribution", {}).items() if code != "200")
print(f"Gateway: {duration}s per run, {len(rounds)} rounds; fixed rate {rate} req/s over {conns} connections,"
      f" max rate over {max_conns}; medians of the rounds")
print()
print("| path | added p50 ms | added p99 ms | CPU µs / req (fixed rate) | max req/s (one core) | CPU µs / req (max) | new TLS connections/s | CPU µs / new connection | errors | non-200 answers |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for name in order:
    rows = []
    for r in rounds:
        c = res(name, r)
        p50 = pct(name, r, "p50") - pct("direct", r, "p50")
        p99 = pct(name, r, "p99") - pct("direct", r, "p99")
        fixed = (c[1] - c[0]) / max(count(name, r, "rate"), 1)
        mx = load(name, r, "max")["summary"]["requestsPerSec"]
        cpu_max = (c[3] - c[2]) / max(count(name, r, "max"), 1)
        new = load(name, r, "new")["summary"]["requestsPerSec"]
        cpu_new = (c[5] - c[4]) / max(count(name, r, "new"), 1)
        rows.append((p50, p99, fixed, mx, cpu_max, new, cpu_new, errors(name, r), not_ok(name, r)))
    col = lambda i: med(x[i] for x in rows)
    if name == "direct":
        print(f"| direct | – | – | – | {col(3):.0f} | – | {col(5):.0f} | – | {sum(x[7] for x in rows)} | {sum(x[8] for x in rows)} |")
    else:
        print(f"| {name} | {col(0):+.3f} | {col(1):+.3f} | {col(2):.1f} | {col(3):.0f} | {col(4):.1f} | {col(5):.0f} | {col(6):.0f} | {sum(x[7] for x in rows)} | {sum(x[8] for x in rows)} |")
print()
for name in order[1:]:
    print(f"- {name} per round (added p50/p99 ms; max req/s; new conn/s): " + ", ".join(
        f"{pct(name, r, 'p50') - pct('direct', r, 'p50'):+.3f}/{pct(name, r, 'p99') - pct('direct', r, 'p99'):+.3f}; "
        f"{load(name, r, 'max')['summary']['requestsPerSec']:.0f}; {load(name, r, 'new')['summary']['requestsPerSec']:.0f}"
        for r in rounds))
bad = [name for name in order if any(not_ok(name, r) for r in rounds)]
if bad:
    print()
    print(f"WARNING: answers other than 200 on {', '.join(bad)}: those rows do not measure the path")
PY
