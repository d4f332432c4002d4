#!/usr/bin/env bash
# The DNS proxy (issue 25): queries per second on one core, answered from the name table and
# forwarded to the pod's resolver, beside the resolver asked directly and (when installed)
# dnsmasq doing the same two jobs on the same core.
#
#   bench/dns.sh
#   SECONDS_EACH=10 CONCURRENCY=64 bench/dns.sh
#
# The proxy (and dnsmasq) run on core 1 with one worker; the load generator and the resolver
# behind them share core 0. The load is CONCURRENCY UDP clients with one query in flight each
# (bench: proxy/examples/dns-load.rs); the resolver answers every A question at once. CPU per
# query is the server's user+system time over the queries it answered. Needs root (the
# resolver listens on 127.0.0.153:53, the port resolv.conf implies).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH="${SECONDS_EACH:-5}"
CONCURRENCY="${CONCURRENCY:-32}"
cargo build --release --quiet -p trellis-proxy --bin trellis-proxy --example dns-load
TARGET="${CARGO_TARGET_DIR:-target}/release"
PROXY="$(realpath "$TARGET/trellis-proxy")"
LOAD="$(realpath "$TARGET/examples/dns-load")"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

RESOLVER=127.0.0.153
PROXY_DNS=127.0.0.1:15353
DNSMASQ_DNS=127.0.0.1:15354

taskset -c 0 "$LOAD" serve "$RESOLVER:53" > /dev/null &
pids+=($!)

cat > "$work/proxy.yaml" <<YAML
services:
  - { name: api.external.test, aliases: [api], addresses: [240.240.0.7], ports: [{ port: 80, protocol: HTTP }] }
YAML
echo "nameserver $RESOLVER" > "$work/resolv.conf"
env -u PROXY_CONFIG taskset -c 1 "$PROXY" --config "$work/proxy.yaml" --concurrency 1 \
  --listen-address 127.0.0.1 --outbound-port 0 --inbound-port 0 --admin-port 0 --readiness-port 0 \
  --stats-port 0 --status-port 0 --dns-capture --dns-port "${PROXY_DNS##*:}" \
  --resolv-conf "$work/resolv.conf" --log-level warn > /dev/null &
proxy_pid=$!
pids+=($proxy_pid)

dnsmasq_pid=""
if command -v dnsmasq > /dev/null; then
  taskset -c 1 dnsmasq --keep-in-foreground --port="${DNSMASQ_DNS##*:}" --listen-address=127.0.0.1 \
    --bind-interfaces --no-resolv --no-hosts --server="$RESOLVER" --cache-size=0 \
    --address=/api.external.test/240.240.0.7 --user=root --pid-file="$work/dnsmasq.pid" 2> /dev/null &
  dnsmasq_pid=$!
  pids+=($dnsmasq_pid)
fi

# Waits until $1 answers a query.
wait_dns() {
  for _ in $(seq 100); do
    "$LOAD" query "$1" api.external.test 0.1 1 2> /dev/null | grep -qv "answered=0 " && return 0
  done
  echo "no DNS answer from $1" >&2; exit 1
}
wait_dns "$RESOLVER:53"
wait_dns "$PROXY_DNS"
[ -n "$dnsmasq_pid" ] && wait_dns "$DNSMASQ_DNS"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# run LABEL ADDR NAME PID: one row of the table.
run() {
  local label=$1 addr=$2 name=$3 pid=$4 before after line
  before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  line=$(taskset -c 0 "$LOAD" query "$addr" "$name" "$SECONDS_EACH" "$CONCURRENCY")
  after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  local answered qps p50 p99 lost cpu
  answered=$(sed -E 's/.*answered=([0-9]+).*/\1/' <<< "$line")
  lost=$(sed -E 's/.*lost=([0-9]+).*/\1/' <<< "$line")
  qps=$(sed -E 's/.*qps=([0-9]+).*/\1/' <<< "$line")
  p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<< "$line")
  p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<< "$line")
  if [ -n "$pid" ] && [ "$answered" -gt 0 ]; then
    cpu=$(awk -v t=$((after - before)) -v hz="$TICK" -v n="$answered" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  else
    cpu="-"
  fi
  printf "| %-34s | %9s | %7s | %7s | %6s | %13s |\n" "$label" "$qps" "$p50" "$p99" "$lost" "$cpu"
}

echo "DNS over UDP, ${SECONDS_EACH}s each, $CONCURRENCY clients with one query in flight; server on core 1"
echo
printf "| %-34s | %9s | %7s | %7s | %6s | %13s |\n" "" "queries/s" "p50 µs" "p99 µs" "lost" "CPU µs/query"
printf "|%s|%s|%s|%s|%s|%s|\n" "------------------------------------" "-----------" "---------" "---------" "--------" "---------------"
run "resolver, direct (baseline)" "$RESOLVER:53" other.example.test ""
run "trellis-proxy, from its table" "$PROXY_DNS" api.external.test "$proxy_pid"
run "trellis-proxy, forwarded" "$PROXY_DNS" other.example.test "$proxy_pid"
if [ -n "$dnsmasq_pid" ]; then
  run "dnsmasq, local (--address)" "$DNSMASQ_DNS" api.external.test "$dnsmasq_pid"
  run "dnsmasq, forwarded (no cache)" "$DNSMASQ_DNS" other.example.test "$dnsmasq_pid"
fi
