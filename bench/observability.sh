#!/usr/bin/env bash
# What access logs and tracing cost a pair of proxies (issue 24), against the same pair with
# both off, in the same run; and nginx's pair with and without its access log as the reference.
#
#   bench/observability.sh                 # 3 rounds of 5 s at 1,000 req/s over 100 connections
#   ROUNDS=5 DURATION=10 bench/observability.sh
#   INSTRUCTIONS=0 bench/observability.sh  # leave out the callgrind part
#   FIXED_RATE=0 bench/observability.sh    # the callgrind part only (no trellisd build, no
#                                          # fixed-rate rounds)
#   PREBUILT=DIR FIXED_RATE=0 bench/observability.sh  # the same for binaries kept from another
#                                          # build (DIR laid out as target/release; see
#                                          # bench/proxy-common.sh)
#
# Pairs (client-side proxy → server-side proxy → upstream, each proxy on CPU 0 with one
# worker; the upstream, the load generator and the Zipkin sink on CPU 1):
#   trellis-pair            access logs and tracing off
#   trellis-pair-log        both proxies write Istio's default JSON access log to a file
#   trellis-pair-trace1     tracing, 1 % of requests sampled, spans to a Zipkin endpoint
#   trellis-pair-trace100   tracing, every request sampled
#   nginx-pair              nginx to nginx, keep-alive, access_log off
#   nginx-pair-log          the same with a JSON access log of the same fields on both hops
#                           (nginx writes each line with its own write(2), unbuffered, as it
#                           does by default)
# Each round runs every pair once (the order reversed in even rounds); a pair's figure is the
# median over the rounds. CPU per request is the proxies' user + system time (schedstat, every
# thread) over the requests of the fixed-rate run; added latency is the pair's percentile minus
# the direct run's in the same round. "Cost" lines compare each pair with its own "off" pair,
# round by round.
#
# INSTRUCTIONS=1 (the default) also counts user-space instructions per request with callgrind
# for the Trellis pair in one process (outbound → its own inbound), off / log / trace 1 % /
# trace 100 %: the proxy's own work, which the machine's noise does not move; and, the same
# way, nginx's pair in one process (one server proxying to the other) with and without its
# JSON access log.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-5}"
ROUNDS="${ROUNDS:-3}"
RATE="${RATE:-1000}"
CONNECTIONS="${CONNECTIONS:-100}"
INSTRUCTIONS="${INSTRUCTIONS:-1}"
FIXED_RATE="${FIXED_RATE:-1}"
SMALL="${SMALL:-300}"
LARGE="${LARGE:-1500}"

# shellcheck source=bench/proxy-common.sh
source bench/proxy-common.sh
if [ "$FIXED_RATE" = 1 ]; then
  # shellcheck source=bench/mtls-common.sh
  source bench/mtls-common.sh
  ensure_nginx
fi
start_upstream taskset -c 1
# The Zipkin collector: anything that answers POST /api/v2/spans with 2xx will do.
SINK=18090
taskset -c 1 "$UPSTREAM" "127.0.0.1:$SINK" > /dev/null &
pids+=($!)
wait_port $SINK

# observability NAME: the YAML lines a configuration adds to a proxy's config (for one proxy,
# its log file is $work/NAME-SIDE.log).
observability() {
  local name=$1 side=$2
  case $name in
    *-log) printf 'accessLogs:\n  - { path: %s, encoding: ACCESS_LOG_ENCODING_JSON }\n' "$work/$name-$side.log" ;;
    *-trace1 | *-trace100)
      local percent=${name##*-trace}
      cat <<YAML
tracing:
  samplingPercent: $percent
  provider: { name: zipkin, addresses: ["127.0.0.1:$SINK"], authority: zipkin.bench, zipkin: {} }
YAML
      ;;
  esac
}

# trellis_side NAME SIDE ENDPOINT_PORT BASE: one proxy of a pair (see start_trellis).
trellis_side() {
  local name=$1 side=$2 endpoint=$3 base=$4
  bench_config "$work/$name-$side.yaml" "$endpoint"
  observability "$name" "$side" >> "$work/$name-$side.yaml"
  RUST_LOG=warn taskset -c 0 "$PROXY" --config "$work/$name-$side.yaml" --concurrency 1 \
    --outbound-port "$base" --inbound-port $((base + 1)) --admin-port $((base + 2)) \
    --readiness-port $((base + 3)) --stats-port $((base + 4)) --status-port $((base + 5)) \
    --explicit-inbound > /dev/null 2>&1 &
  pids+=($!)
  echo $! > "$work/$name-$side.pids"
  wait_port "$base"
}

# trellis_pair NAME BASE: server-side on BASE.., client-side on BASE+10.. (its endpoint: the
# server's inbound port BASE+1).
trellis_pair() {
  trellis_side "$1" server $UP "$2"
  trellis_side "$1" client $(($2 + 1)) $(($2 + 10))
  paths+=("$1|http://127.0.0.1:$(($2 + 10))/|bench:$UP|$work/$1-client.pids $work/$1-server.pids")
}

# The JSON line nginx writes: the fields of Istio's format that nginx has variables for.
nginx_log_format() {
  cat <<'CONF'
  log_format istio escape=json '{"start_time":"$time_iso8601","method":"$request_method",'
    '"path":"$request_uri","protocol":"$server_protocol","response_code":$status,'
    '"bytes_received":$request_length,"bytes_sent":$bytes_sent,"duration":$request_time,'
    '"upstream_service_time":"$upstream_response_time","x_forwarded_for":"$http_x_forwarded_for",'
    '"user_agent":"$http_user_agent","request_id":"$http_x_request_id","authority":"$host",'
    '"upstream_host":"$upstream_addr","downstream_remote_address":"$remote_addr:$remote_port",'
    '"downstream_local_address":"$server_addr:$server_port"}';
CONF
}

# nginx_side NAME SIDE LISTEN UPSTREAM_PORT LOG(on|off)
nginx_side() {
  local name=$1 side=$2 listen=$3 to=$4 log=$5 dir="$work/$1-$2"
  mkdir -p "$dir"
  local access="access_log off;"
  [ "$log" = on ] && access="access_log $dir/access.log istio;"
  cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
worker_cpu_affinity 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
$(nginx_log_format)
  $access
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
  uwsgi_temp_path $dir; scgi_temp_path $dir;
  upstream up { server 127.0.0.1:$to; keepalive 256; }
  server {
    listen 127.0.0.1:$listen;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
  taskset -c 0 nginx -c "$dir/nginx.conf" -p "$dir" &
  pids+=($!)
  local master=$!
  wait_port "$listen"
  echo "$master $(pgrep -P "$master" | tr '\n' ' ')" > "$work/$name-$side.pids"
}

nginx_pair() { # NAME BASE LOG
  nginx_side "$1" server $(($2 + 1)) $UP "$3"
  nginx_side "$1" client "$2" $(($2 + 1)) "$3"
  paths+=("$1|http://127.0.0.1:$2/||$work/$1-client.pids $work/$1-server.pids")
}

# scenario ROUND NAME URL HOST pidfiles...: a warm-up, then the fixed-rate run, with the
# proxies' CPU time around it.
scenario() {
  local round=$1 name=$2 url=$3 host=$4; shift 4
  local files=("$@") hdr=() out="$work/$name-$round"
  [ -n "$host" ] && hdr=(-H "host: $host")
  taskset -c 1 "$OHA" --no-tui -n 2000 -c 20 "${hdr[@]}" "$url" > /dev/null
  local before=0 after=0
  [ ${#files[@]} -gt 0 ] && before=$(cpu_of "${files[@]}")
  taskset -c 1 "$OHA" --no-tui --output-format json -z "${DURATION}s" -c "$CONNECTIONS" -q "$RATE" \
    --latency-correction "${hdr[@]}" "$url" > "$out.json"
  [ ${#files[@]} -gt 0 ] && after=$(cpu_of "${files[@]}")
  echo "$before $after" > "$out.res"
}

# One process holds the pair: outbound → its own inbound → upstream.
one_process_config() { # FILE NAME
  bench_config "$1" 19001
  observability "$2" one >> "$1"
}
# nginx's pair in one process, the same way: a server on 19010 proxying to one on 19011
# proxying to the upstream; LOG on: both write the JSON line (each with its own write(2)).
one_process_nginx() { # DIR LOG(on|off)
  local dir=$1 access="access_log off;"
  mkdir -p "$dir"
  [ "$2" = on ] && access="access_log $dir/access.log istio;"
  cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
$(nginx_log_format)
  $access
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
  uwsgi_temp_path $dir; scgi_temp_path $dir;
  upstream inbound { server 127.0.0.1:19011; keepalive 64; }
  upstream app { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:19010;
    location / { proxy_pass http://inbound; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  server {
    listen 127.0.0.1:19011;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
}
# counted NAME REQUESTS PORT HOST -- COMMAND...: runs COMMAND under callgrind, sends REQUESTS
# requests to PORT, stops it, prints its total instructions.
counted() {
  local name=$1 requests=$2 port=$3 host=$4 out="$work/$1-$2.callgrind"
  shift 5
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" > /dev/null 2> "$work/$name.valgrind" &
  local pid=$!
  pids+=($pid)
  wait_port "$port"
  local answered
  answered=$("$OHA" --no-tui --output-format json -n "$requests" -c 10 -H "host: $host" \
    "http://127.0.0.1:$port/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["statusCodeDistribution"].get("200", 0))')
  [ "$answered" = "$requests" ] || { echo "$name: $answered of $requests answered 200" >&2; exit 1; }
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}
per_request() { # NAME PORT HOST -- COMMAND...: instructions per request, SMALL vs LARGE requests
  local name=$1 port=$2 host=$3 small large
  shift 3
  small=$(counted "$name" "$SMALL" "$port" "$host" "$@")
  large=$(counted "$name" "$LARGE" "$port" "$host" "$@")
  echo "$name $(( (large - small) / (LARGE - SMALL) ))" >> "$work/instructions"
}
instruction_counts() {
  command -v valgrind > /dev/null || { echo "no valgrind: no instruction counts" >&2; return 0; }
  for name in off log trace1 trace100; do
    one_process_config "$work/one-$name.yaml" "one-$name"
    RUST_LOG=warn per_request "$name" 19000 "bench:$UP" -- "$PROXY" --config "$work/one-$name.yaml" \
      --concurrency 1 --outbound-port 19000 --inbound-port 19001 --admin-port 19002 \
      --readiness-port 19003 --stats-port 19004 --status-port 19005 --explicit-inbound
  done
  if command -v nginx > /dev/null; then
    for log in off on; do
      one_process_nginx "$work/one-nginx-$log" $log
      per_request "nginx-log-$log" 19010 bench -- nginx -c "$work/one-nginx-$log/nginx.conf" -p "$work/one-nginx-$log"
    done
  fi
  echo
  echo "The pair in one process: user-space instructions per request (callgrind; HTTP/1.1 keep-alive,"
  echo "10 connections, $SMALL vs $LARGE requests)."
  echo
  echo "| configuration | instructions per request | over its off |"
  echo "|---|---:|---:|"
  local name count base
  while read -r name count; do
    case $name in
      nginx-*) base=$(awk '$1 == "nginx-log-off" {print $2}' "$work/instructions") ;;
      *) base=$(awk '$1 == "off" {print $2}' "$work/instructions") ;;
    esac
    echo "| $name | $count | $(awk -v a="$count" -v b="$base" 'BEGIN {printf "%+d (%+.1f%%)", a - b, (a - b) * 100 / b}') |"
  done < "$work/instructions"
  if [ -f "$work/one-nginx-on/access.log" ]; then
    echo
    echo "nginx one-process log: $(wc -l < "$work/one-nginx-on/access.log") lines"
  fi
}
if [ "$FIXED_RATE" != 1 ]; then
  instruction_counts
  exit 0
fi

paths=("direct|http://127.0.0.1:$UP/||")
trellis_pair trellis-pair 18100
trellis_pair trellis-pair-log 18200
trellis_pair trellis-pair-trace1 18300
trellis_pair trellis-pair-trace100 18400
if command -v nginx > /dev/null; then
  nginx_pair nginx-pair 18500 off
  nginx_pair nginx-pair-log 18600 on
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
# The logs were written: count their lines, so that a silent logger cannot pass for a cheap one.
for f in "$work"/trellis-pair-log-client.log "$work"/nginx-pair-log-client/access.log; do
  [ -f "$f" ] && echo "$(basename "$(dirname "$f")")/$(basename "$f"): $(wc -l < "$f") lines" >> "$work/lines"
done

python3 - "$work" "$RATE" "$CONNECTIONS" "$DURATION" "$ROUNDS" <<'PY'
import json, statistics, sys
work, rate, conns, duration, rounds = sys.argv[1:]
rounds = range(1, int(rounds) + 1)
order = open(f"{work}/order").read().split()
med = statistics.median
def load(name, r):
    return json.load(open(f"{work}/{name}-{r}.json"))
def pct(name, r, p):
    return load(name, r)["latencyPercentiles"][p] * 1000
def cpu_us(name, r):
    before, after = (int(x) for x in open(f"{work}/{name}-{r}.res").read().split())
    done = load(name, r)["summary"]["requestsPerSec"] * float(duration)
    return (after - before) / done if done else 0
def errors(name, r):
    d = load(name, r)
    bad = {k: n for k, n in d.get("errorDistribution", {}).items() if "aborted due to deadline" not in k}
    return sum(n for c, n in d.get("statusCodeDistribution", {}).items() if not c.startswith("2")) + sum(bad.values())
print(f"{rate} req/s over {conns} keep-alive connections for {duration}s (latency-corrected), "
      f"medians of {len(rounds)} rounds; proxies on CPU 0, one worker each.\n")
print("| pair | p50 ms | p99 ms | added p50 | added p99 | errors | CPU µs / req (both proxies) |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name in order:
    p50 = med(pct(name, r, "p50") for r in rounds)
    p99 = med(pct(name, r, "p99") for r in rounds)
    if name == "direct":
        print(f"| direct | {p50:.3f} | {p99:.3f} | – | – | {sum(errors(name, r) for r in rounds)} | – |")
        continue
    a50 = med(pct(name, r, "p50") - pct("direct", r, "p50") for r in rounds)
    a99 = med(pct(name, r, "p99") - pct("direct", r, "p99") for r in rounds)
    print(f"| {name} | {p50:.3f} | {p99:.3f} | {a50:+.3f} | {a99:+.3f} | "
          f"{sum(errors(name, r) for r in rounds)} | {med(cpu_us(name, r) for r in rounds):.1f} |")
print("\nWhat each costs over its own pair with it off, round by round (CPU µs per request; added "
      "p50 / p99 ms), and the median:\n")
for name in order:
    base = "trellis-pair" if name.startswith("trellis-pair-") else "nginx-pair" if name == "nginx-pair-log" else None
    if not base or base not in order:
        continue
    cpu = [cpu_us(name, r) - cpu_us(base, r) for r in rounds]
    lat = [(pct(name, r, "p50") - pct(base, r, "p50"), pct(name, r, "p99") - pct(base, r, "p99")) for r in rounds]
    rows = ", ".join(f"{c:+.1f} µs ({a:+.3f} / {b:+.3f})" for c, (a, b) in zip(cpu, lat))
    print(f"- {name} over {base}: {med(cpu):+.1f} µs per request, p50 {med(a for a, _ in lat):+.3f} ms, "
          f"p99 {med(b for _, b in lat):+.3f} ms [{rows}]")
if "nginx-pair-log" in order:
    t = [(cpu_us("trellis-pair-log", r) - cpu_us("trellis-pair", r)) - (cpu_us("nginx-pair-log", r) - cpu_us("nginx-pair", r)) for r in rounds]
    print(f"\nAccess logging, Trellis's cost minus nginx's, per round: {', '.join(f'{x:+.1f}' for x in t)} µs "
          f"(median {med(t):+.1f}; negative: Trellis's logging is cheaper)")
PY
[ -f "$work/lines" ] && { echo; cat "$work/lines"; }

[ "$INSTRUCTIONS" = 1 ] || exit 0
instruction_counts
