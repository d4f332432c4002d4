#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: unlike req/s
# and CPU seconds, the count hardly moves with what else the machine is doing, so a change of
# a few percent in the proxy's own work shows up. The kernel's share (loopback TCP, about two
# thirds of the CPU time per request) is not counted; it is much the same for every proxy.
#
#   bench/proxy-instructions.sh            # Trellis outbound and inbound, hyper's floor, and nginx
#   PGO_PROXY=target/pgo/release/trellis-proxy bench/proxy-instructions.sh   # and the PGO build
#
# "hyper-floor" is proxy/examples/hyper-floor.rs: a hyper server and pooled hyper clients and
# nothing else, the least any proxy built on hyper and tokio can cost.
#
# Each proxy runs under callgrind twice, for SMALL and LARGE keep-alive HTTP/1.1 requests over
# 10 connections; per request = (instructions(LARGE) - instructions(SMALL)) / (LARGE - SMALL),
# which removes start-up and shutdown. The upstream is proxy/examples/bench-upstream.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

SMALL="${SMALL:-500}"
LARGE="${LARGE:-2500}"
command -v valgrind > /dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
# shellcheck source=bench/proxy-common.sh
source bench/proxy-common.sh
start_upstream

bench_config "$work/trellis.yaml" $UP
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  upstream up { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:18401;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF

# instructions NAME PORT REQUESTS -- command...: total instructions of one run serving REQUESTS.
instructions() {
  local name=$1 port=$2 requests=$3; shift 4
  local out="$work/$name-$requests.callgrind"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" > /dev/null 2> "$work/$name.valgrind" &
  local pid=$!
  pids+=($pid)
  wait_port "$port"
  local answered
  answered=$("$OHA" --no-tui --output-format json -n "$requests" -c 10 -H "host: bench:$UP" \
    "http://127.0.0.1:$port/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["statusCodeDistribution"].get("200", 0))')
  [ "$answered" = "$requests" ] || { echo "$name: $answered of $requests answered" >&2; exit 1; }
  # nginx leaves on QUIT (graceful), Trellis on TERM (drain); both then write the profile.
  if [ "$name" = nginx ]; then kill -QUIT "$pid"; else kill -TERM "$pid"; fi
  wait "$pid" || true
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

per_request() {
  local name=$1 port=$2; shift 2
  local small large
  small=$(instructions "$name" "$port" "$SMALL" -- "$@")
  large=$(instructions "$name" "$port" "$LARGE" -- "$@")
  echo "$name $(( (large - small) / (LARGE - SMALL) ))" >> "$work/results"
}

trellis=("$PROXY" --config "$work/trellis.yaml" --concurrency 1 --outbound-port 18100 --inbound-port 18101
  --admin-port 18102 --readiness-port 18103 --stats-port 18104 --status-port 18105 --explicit-inbound)
per_request trellis-outbound 18100 "${trellis[@]}"
per_request trellis-inbound 18101 "${trellis[@]}"
if [ -n "${PGO_PROXY:-}" ]; then # the profile-guided build (scripts/build-pgo.sh)
  per_request trellis-pgo-outbound 18100 "$(realpath "$PGO_PROXY")" "${trellis[@]:1}"
fi
per_request hyper-floor 18600 "$HYPER_FLOOR" 127.0.0.1:18600 127.0.0.1:$UP
if command -v nginx > /dev/null; then
  per_request nginx 18401 nginx -c "$work/nginx/nginx.conf" -p "$work/nginx"
fi

echo "User-space instructions per request (callgrind; HTTP/1.1 keep-alive, 10 connections, $SMALL vs $LARGE requests)."
echo
echo "| proxy | instructions per request | vs nginx |"
echo "|---|---:|---:|"
base=$(awk '$1 == "nginx" {print $2}' "$work/results")
while read -r name count; do
  ratio="–"; [ -n "$base" ] && ratio=$(awk -v a="$count" -v b="$base" 'BEGIN {printf "%.2f", a / b}')
  echo "| $name | $count | $ratio |"
done < "$work/results"
