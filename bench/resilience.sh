#!/usr/bin/env bash
# What the resilience features (issue 23) cost a pair of proxies: user-space instructions per
# request, counted by callgrind (which hardly moves with what else the machine is doing).
#
#   bench/resilience.sh
#   BEFORE_PROXY=/path/to/older/trellis-proxy bench/resilience.sh   # and an older build, same run
#   SMALL=300 LARGE=1500 bench/resilience.sh
#
# The pair runs in one Trellis process (one worker): the client sends to its outbound port, the
# cluster's endpoint is the same proxy's inbound port, which delivers to the upstream — so one
# callgrind count covers both sides of the hop. Every route has Istio's default retry policy
# (2 attempts on connect-failure, refused-stream, unavailable, cancelled,
# retriable-status-codes), as trellisd writes it for every route. Configurations:
#
#   none          no outlier detection, no retry budget, no rate limit
#   resilience    outlier detection (5 consecutive 5xx, 10s interval), a retry budget (0.2,
#                 10/s, 10s) and a local rate limit on the inbound side (a bucket that never
#                 empties, enforced on every request)
#
# BEFORE_PROXY, when given, runs the "none" configuration with that binary too: the proxy from
# before the resilience work (3c233ad) against this one shows whether the features cost
# anything when they are not configured.
# Per request = (instructions(LARGE) - instructions(SMALL)) / (LARGE - SMALL) over 10
# keep-alive HTTP/1.1 connections, which removes start-up and shutdown.
set -euo pipefail
cd "$(dirname "$0")/.."

SMALL="${SMALL:-500}"
LARGE="${LARGE:-2500}"
command -v valgrind > /dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
# shellcheck source=bench/proxy-common.sh
source bench/proxy-common.sh
start_upstream

OUTBOUND=18100
INBOUND=18101

# pair_config FILE EXTRA_CLUSTER EXTRA_TOP: bench:$UP goes to this proxy's own inbound port.
pair_config() {
  cat > "$1" <<YAML
services:
  - { name: bench, ports: [{ port: $UP, protocol: HTTP }] }
virtualHosts:
  - name: bench:$UP
    routes:
      - name: all
        forward: { clusters: [{ cluster: bench }] }
        retries: { attempts: 2, retryOn: [connect-failure, refused-stream, unavailable, cancelled, retriable-status-codes] }
clusters:
  - name: bench
    service: bench
$2
endpoints:
  - service: bench
    endpoints: [{ address: 127.0.0.1, port: $INBOUND }]
$3
YAML
}

pair_config "$work/none.yaml" "" ""
pair_config "$work/resilience.yaml" \
  "    outlierDetection: { consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 100 }
    retryBudget: { retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 10s }" \
  "inboundLocalRateLimit:
  statPrefix: http_local_rate_limiter
  tokenBucket: { maxTokens: 1000000000, tokensPerFill: 1000000000, fillInterval: 1s }
  enabledPercent: 100
  enforcedPercent: 100"

# instructions NAME BINARY CONFIG REQUESTS: the proxy's total instructions serving REQUESTS.
instructions() {
  local name=$1 binary=$2 config=$3 requests=$4
  local out="$work/$name-$requests.callgrind"
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$binary" --config "$config" \
    --concurrency 1 --outbound-port $OUTBOUND --inbound-port $INBOUND --admin-port 18102 \
    --readiness-port 18103 --stats-port 18104 --status-port 18105 --explicit-inbound \
    > /dev/null 2> "$work/$name.valgrind" &
  local pid=$!
  pids+=($pid)
  wait_port $OUTBOUND
  local answered
  answered=$("$OHA" --no-tui --output-format json -n "$requests" -c 10 -H "host: bench:$UP" \
    "http://127.0.0.1:$OUTBOUND/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["statusCodeDistribution"].get("200", 0))')
  [ "$answered" = "$requests" ] || { echo "$name: $answered of $requests answered 200" >&2; exit 1; }
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

per_request() {
  local name=$1 binary=$2 config=$3 small large
  small=$(instructions "$name" "$binary" "$config" "$SMALL")
  large=$(instructions "$name" "$binary" "$config" "$LARGE")
  echo "$name $(( (large - small) / (LARGE - SMALL) ))" >> "$work/results"
}

if [ -n "${BEFORE_PROXY:-}" ]; then
  per_request before-none "$(realpath "$BEFORE_PROXY")" "$work/none.yaml"
fi
per_request none "$PROXY" "$work/none.yaml"
per_request resilience "$PROXY" "$work/resilience.yaml"

echo "A pair of proxies in one process (outbound → its own inbound → upstream): user-space"
echo "instructions per request (callgrind; HTTP/1.1 keep-alive, 10 connections, $SMALL vs $LARGE requests)."
echo
echo "| build | configuration | instructions per request | over this build's none |"
echo "|---|---|---:|---:|"
base=$(awk '$1 == "none" {print $2}' "$work/results")
while read -r name count; do
  case $name in
    before-none) build="before ($BEFORE_PROXY)"; label=none ;;
    *) build=this; label=$name ;;
  esac
  echo "| $build | $label | $count | $(awk -v a="$count" -v b="$base" 'BEGIN {printf "%+.1f%%", (a - b) * 100 / b}') |"
done < "$work/results"
