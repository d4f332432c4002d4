#!/usr/bin/env bash
# Control-plane scale benchmark: trellisd with SERVICES services in a config directory and N
# simulated proxies (control-plane/examples/xds-load.rs: lightweight delta xDS clients in one
# process), then one VirtualService weight change, timed until every proxy has ACKed it.
#
#   bench/control-plane.sh
#   SCENARIOS="10000:100" bench/control-plane.sh      # proxies:streams-per-connection, ...
#   SCENARIOS="1000:1 1000:1:tls" bench/control-plane.sh  # ...[:transport], see below
#
# Every service is a ServiceEntry, two WorkloadEntries (v1, v2), a DestinationRule with those
# subsets and a VirtualService splitting 90/10, in namespace `bench`, 100 services per file.
# Each client opens every type (settings and the service table are wildcard), subscribes to
# the virtual hosts of SERVICES_PER_PROXY services — web-7 and others spread over the table —
# and ACKs every response. The change rewrites web-7's VirtualService to 50/50.
#
# Transport (a scenario's third field): plain (the default) connects to the plaintext xDS port
# (15010's). tls: certified proxies, as in Kubernetes: each client first obtains a workload
# certificate through Istio's CreateCertificate (a fresh P-256 key and CSR, a bearer token from
# the static token file trellisd is given with --token-auth-file, one service account per
# client), then holds its ADS stream over the TLS port (15012's), on the connection that
# carried the CSR; the stream sends the token too (the TLS port requires it). tls-separate: the
# same, the CSR over a second TLS connection that stays open beside the xDS one: what the proxy
# does (its CA client and its xDS client each keep a channel to 15012). When any scenario is tls,
# every scenario's trellisd gets the token file and writes its root (--root-cert-file), so that
# plain and tls rows differ only in the clients.
#
# Per scenario (a fresh trellisd each, all on loopback):
#   sync s          time for every client to connect and hold its config
#   ACK ms          from the change written (file renamed into place) to each client having
#                   received and ACKed the new virtual host: min (the fixed cost: file poll
#                   every 200 ms, reading the directory, 100 ms debounce), p50, p99, max
#   server ACKed    proxies /debug/syncz shows SYNCED with the new generation ACKed
#   CPU s           trellisd user+system CPU seconds while the clients connect, and for the
#                   change (from the write until every client ACKed)
#   certified       clients that obtained a certificate (tls scenarios)
#   RSS             trellisd resident memory after one client has synced (the model and its
#                   translation, shared); right when every client has synced ("at sync");
#                   with every client connected once trellisd has been quiet and returned the
#                   memory the burst freed ("connected", settled); and the peak (VmHWM);
#                   per proxy = (connected - before) / proxies
#   bytes           encoded responses sent (trellisd_xds_sent_bytes_total): for the change,
#                   and per proxy for the first sync
# The load generator shares the machine's cores with trellisd; its CPU time for the change is
# shown too. TRELLISD_ENV="NAME=value ..." sets variables for trellisd only (allocator tuning,
# say); TRELLISD_LOG its log level; KEEP_WORK keeps the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVICES="${SERVICES:-1000}"
SCENARIOS="${SCENARIOS:-1000:100 1000:1 10000:100 10000:1}"
SERVICES_PER_PROXY="${SERVICES_PER_PROXY:-5}"
SYNC_TIMEOUT="${SYNC_TIMEOUT:-120}"
UPDATE_TIMEOUT="${UPDATE_TIMEOUT:-30}"
WATCH=7
WATCH_HOST="web-$WATCH.bench.svc.cluster.local:80"

# PREBUILT=DIR: trellisd and examples/xds-load from DIR (laid out as target/release is), no build.
if [ -z "${PREBUILT:-}" ]; then
  cargo build --release --quiet -p trellis-control-plane --bin trellisd --example xds-load
fi
TARGET="${PREBUILT:-${CARGO_TARGET_DIR:-target}/release}"
TRELLISD="$(realpath "$TARGET/trellisd")"
LOAD="$(realpath "$TARGET/examples/xds-load")"

# One connection per client needs a descriptor per client in both processes.
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
pids=()
cleanup() {
  exec 3>&-
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${KEEP_WORK:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "control-plane.sh: $*" >&2
  exit 1
}

# --- the config directory -----------------------------------------------------------------

# Service $1 with web-7's v1 weight $2 (the others always 90/10).
service_docs() {
  local i=$1 name="web-$1" host="web-$1.bench.svc.cluster.local" w=90
  local ip="$((i / 250)).$((i % 250 + 1))"
  if [ "$i" -eq "$WATCH" ]; then w=$2; fi
  printf '%s\n' \
    "apiVersion: networking.istio.io/v1" \
    "kind: ServiceEntry" \
    "metadata: { name: $name, namespace: bench }" \
    "spec:" \
    "  hosts: [$host]" \
    "  addresses: [240.240.$ip]" \
    "  ports: [{ number: 80, name: http, protocol: HTTP }]" \
    "  resolution: STATIC" \
    "  location: MESH_INTERNAL" \
    "  workloadSelector: { labels: { app: $name } }" \
    "---" \
    "apiVersion: networking.istio.io/v1" \
    "kind: WorkloadEntry" \
    "metadata: { name: $name-v1, namespace: bench }" \
    "spec: { address: 10.1.$ip, ports: { http: 8080 }, labels: { app: $name, version: v1 } }" \
    "---" \
    "apiVersion: networking.istio.io/v1" \
    "kind: WorkloadEntry" \
    "metadata: { name: $name-v2, namespace: bench }" \
    "spec: { address: 10.2.$ip, ports: { http: 8080 }, labels: { app: $name, version: v2 } }" \
    "---" \
    "apiVersion: networking.istio.io/v1" \
    "kind: DestinationRule" \
    "metadata: { name: $name, namespace: bench }" \
    "spec:" \
    "  host: $host" \
    "  subsets:" \
    "    - { name: v1, labels: { version: v1 } }" \
    "    - { name: v2, labels: { version: v2 } }" \
    "---" \
    "apiVersion: networking.istio.io/v1" \
    "kind: VirtualService" \
    "metadata: { name: $name, namespace: bench }" \
    "spec:" \
    "  hosts: [$host]" \
    "  http:" \
    "    - route:" \
    "        - { destination: { host: $host, subset: v1 }, weight: $w }" \
    "        - { destination: { host: $host, subset: v2 }, weight: $((100 - w)) }" \
    "---"
}

# File $1 (services 100*$1 .. 100*$1+99) with web-7 at weight $2, replaced atomically (the
# hidden temporary file is not read by trellisd).
write_chunk() {
  local chunk=$1 weight=$2 first=$(($1 * 100)) i
  local file
  file="$config/services-$(printf %02d "$chunk").yaml"
  {
    for ((i = first; i < first + 100 && i < SERVICES; i++)); do service_docs "$i" "$weight"; done
  } > "$config/.tmp"
  mv "$config/.tmp" "$file"
}

# The token file: bench-token-<id> is service account bench/load-<id>.
ca_args=()
if [[ " $SCENARIOS " == *:tls* ]]; then
  most=0
  for scenario in $SCENARIOS; do
    p=${scenario%%:*}
    [ "$p" -gt "$most" ] && most=$p
  done
  awk -v n="$most" 'BEGIN { for (i = 0; i < n; i++) printf "bench-token-%d,system:serviceaccount:bench:load-%d,uid-%d\n", i, i, i }' \
    > "$work/tokens.csv"
  ca_args=(--token-auth-file "$work/tokens.csv" --root-cert-file "$work/root-cert.pem")
fi

config="$work/config"
mkdir -p "$config"
for ((c = 0; c * 100 < SERVICES; c++)); do write_chunk "$c" 90; done
echo "config: $SERVICES services, $(find "$config" -name '*.yaml' | wc -l) files," \
  "$(du -sk "$config" | cut -f1) KiB" >&2

# --- measuring a process ------------------------------------------------------------------

TICKS=$(getconf CLK_TCK)
cpu_ticks() { # user + system clock ticks of pid $1
  local s
  s=$(cat "/proc/$1/stat")
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo $((${12} + ${13}))
}
seconds() { awk -v t="$1" -v k="$TICKS" 'BEGIN { printf "%.2f", t / k }'; }
status_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
metric() { # value of metric $1 on the monitoring port (0 when absent)
  curl -s -m 10 "http://$MON/metrics" | awk -v m="$1" '$1 == m { v = $2 } END { print v + 0 }'
}

# Waits (at most $3 s) for a line starting with $2 in file $1 while pid $4 lives.
wait_line() {
  local file=$1 prefix=$2 limit=$3 pid=$4 i
  for ((i = 0; i < limit * 10; i++)); do
    if grep -q "^$prefix" "$file" 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    sleep 0.1
  done
  return 1
}

start_trellisd() {
  # shellcheck disable=SC2086 # TRELLISD_ENV: NAME=value words for trellisd's environment only
  rm -f "$work/root-cert.pem"
  env ${TRELLISD_ENV:-} "$TRELLISD" --config-dir "$config" --xds-address 127.0.0.1:0 --monitoring-address 127.0.0.1:0 \
    "${ca_args[@]}" --log-level "${TRELLISD_LOG:-warn}" > "$work/trellisd.out" 2> "$work/trellisd.err" &
  TPID=$!
  pids+=("$TPID")
  wait_line "$work/trellisd.out" "trellisd listening" 60 "$TPID" ||
    fail "trellisd did not start: $(tail -5 "$work/trellisd.err")"
  # "trellisd listening: xds A monitoring B secure C" (the last _ takes any words after C)
  read -r _ _ _ XDS _ MON _ SECURE _ < "$work/trellisd.out"
  if [ ${#ca_args[@]} -gt 0 ]; then
    local i
    for ((i = 0; i < 100; i++)); do [ -s "$work/root-cert.pem" ] && break; sleep 0.1; done
    [ -s "$work/root-cert.pem" ] || fail "trellisd wrote no root certificate: $(tail -5 "$work/trellisd.err")"
  fi
  local errors
  errors=$(curl -s -m 10 "http://$MON/metrics" | awk '$1 ~ /^trellisd_config_errors_total/ { n += $2 } END { print n + 0 }')
  [ "$errors" -eq 0 ] || fail "trellisd rejected $errors config objects: $(tail -5 "$work/trellisd.err")"
}

# trellisd returns memory freed by a burst once it has been quiet for a second: the resident
# size of pid $1 once it has not moved by more than 512 KiB for 3 s (at most 15 s).
settled_rss() {
  local prev=0 cur stable=0 i
  for ((i = 0; i < 30; i++)); do
    cur=$(status_kib "$1" VmRSS)
    if [ $((cur - prev)) -lt 512 ] && [ $((prev - cur)) -lt 512 ]; then
      stable=$((stable + 1))
      [ "$stable" -ge 6 ] && break
    else
      stable=0
    fi
    prev=$cur
    sleep 0.5
  done
  echo "$cur"
}

stop() { # pid $1
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

result() { awk -v k="$2" '$1 == "RESULT" && $2 == k { print $3 }' "$1"; }

rows=()
held=""
for scenario in $SCENARIOS; do
  IFS=: read -r proxies per_connection transport <<< "$scenario"
  transport=${transport:-plain}
  connections=$(((proxies + per_connection - 1) / per_connection))
  echo "--- $proxies proxies, $per_connection streams per connection ($connections connections), $transport" >&2
  write_chunk 0 90
  start_trellisd
  case $transport in
    plain) target=(--address "http://$XDS") ;;
    tls) target=(--address "$SECURE" --ca-root-cert "$work/root-cert.pem") ;;
    tls-separate) target=(--address "$SECURE" --ca-root-cert "$work/root-cert.pem" --separate-ca-connection) ;;
    *) fail "scenario $scenario: transport $transport is not plain, tls or tls-separate" ;;
  esac

  # One client first: the shared part (the scope's translation) is built before "before".
  timeout 60 "$LOAD" "${target[@]}" --proxies 1 --watch-host "$WATCH_HOST" \
    --services-per-proxy "$SERVICES_PER_PROXY" --sync-only > "$work/warmup.out" 2> "$work/warmup.err" ||
    fail "the first client did not sync: $(tail -5 "$work/warmup.err")"
  rss_before=$(settled_rss "$TPID")
  cpu0=$(cpu_ticks "$TPID")
  bytes0=$(metric trellisd_xds_sent_bytes_total)

  rm -f "$work/in" "$work/load.out"
  mkfifo "$work/in"
  exec 3<> "$work/in"
  # Bounded by its own timeouts (sync, change, update, linger).
  "$LOAD" "${target[@]}" --proxies "$proxies" \
    --streams-per-connection "$per_connection" --services-per-proxy "$SERVICES_PER_PROXY" \
    --watch-host "$WATCH_HOST" --sync-timeout "$SYNC_TIMEOUT" --update-timeout "$UPDATE_TIMEOUT" \
    < "$work/in" > "$work/load.out" 2> "$work/load.err" 3>&- &
  LPID=$!
  pids+=("$LPID")
  wait_line "$work/load.out" READY $((SYNC_TIMEOUT + 30)) "$LPID" ||
    fail "the clients did not sync: $(tail -5 "$work/load.err")"

  rss_synced=$(status_kib "$TPID" VmRSS)
  rss_connected=$(settled_rss "$TPID")
  cpu1=$(cpu_ticks "$TPID") # includes returning the burst's memory
  bytes1=$(metric trellisd_xds_sent_bytes_total)
  connected=$(metric trellisd_xds_connected_proxies)
  load_cpu1=$(cpu_ticks "$LPID")

  # The change: web-7's VirtualService from 90/10 to 50/50.
  write_chunk_at=$(date +%s%N)
  write_chunk 0 50
  echo "changed $write_chunk_at" >&3
  wait_line "$work/load.out" DONE $((UPDATE_TIMEOUT + 30)) "$LPID" ||
    fail "the clients did not report: $(tail -5 "$work/load.err")"
  cpu2=$(cpu_ticks "$TPID")
  load_cpu2=$(cpu_ticks "$LPID")
  bytes2=$(metric trellisd_xds_sent_bytes_total)
  rss_peak=$(status_kib "$TPID" VmHWM)

  # The control plane's own view, with every stream still open.
  curl -s -m 60 "http://$MON/debug/syncz" > "$work/syncz.json"
  server_acked=$(jq '[.proxies[] | select(.status == "SYNCED" and .types.virtualhost.acked
    == ([.types[].sent] | max))] | length' "$work/syncz.json")
  server_proxies=$(jq '.proxies | length' "$work/syncz.json")
  server_held=$(jq -r '[.proxies[] | .types | to_entries | map("\(.key) \(.value.held)") | join(", ")]
    | unique | join(" | ")' "$work/syncz.json")

  echo exit >&3
  exec 3>&-
  wait "$LPID" || echo "xds-load exited with $?: $(tail -3 "$work/load.err")" >&2
  stop "$TPID"
  pids=()
  cp "$work/load.out" "$work/load-$proxies-$per_connection-$transport.out"

  out="$work/load.out"
  acked=$(result "$out" acked)
  [ "$acked" = "$proxies" ] || echo "only $acked of $proxies clients got the change" >&2
  [ "$connected" -eq $((proxies + 0)) ] || echo "trellisd counted $connected connected proxies" >&2
  per_proxy=$(awk -v a="$rss_before" -v b="$rss_connected" -v n="$proxies" 'BEGIN { printf "%.1f", (b - a) / n }')
  initial=$(awk -v a="$bytes0" -v b="$bytes1" -v n="$proxies" 'BEGIN { printf "%.0f", (b - a) / n }')
  rows+=("| $proxies | $connections | $transport | $(result "$out" certified) | $(result "$out" sync_seconds) | $(result "$out" min_ms) | $(result "$out" p50_ms) | $(result "$out" p99_ms) | $(result "$out" max_ms) | $acked / $server_acked of $server_proxies | $(seconds $((cpu1 - cpu0))) | $(seconds $((cpu2 - cpu1))) | $(seconds $((load_cpu2 - load_cpu1))) | $(mib "$rss_before") | $(mib "$rss_synced") | $(mib "$rss_connected") | $per_proxy | $(mib "$rss_peak") | $((bytes2 - bytes1)) | $initial |")
  if [ -z "$held" ]; then
    held="clients (after the change): settings $(result "$out" held_after_settings), service $(result "$out" held_after_service), virtualhost $(result "$out" held_after_virtualhost), cluster $(result "$out" held_after_cluster), endpoints $(result "$out" held_after_endpoints); trellisd /debug/syncz: $server_held"
    weights="web-7 split seen by client 0: $(result "$out" weights_before) -> $(result "$out" weights_after)"
  fi
  echo "responses after the change, by type: $(grep '^RESULT after_sync_responses' "$out" | awk '{ sub("after_sync_responses_", "", $2); printf "%s %s  ", $2, $3 }')" >&2
  echo "${rows[-1]}" >&2
done

echo
echo "$SERVICES services; $SERVICES_PER_PROXY virtual hosts per client; $(nproc) CPUs ($(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2 }'))"
echo
echo "| proxies | connections | transport | certified | sync s | first ACK ms | p50 ms | p99 ms | max ms | ACKed (clients / trellisd) | trellisd CPU s (connect) | trellisd CPU s (change) | load CPU s (change) | RSS before MiB | RSS at sync MiB | RSS connected MiB | KiB per proxy | peak RSS MiB | bytes sent (change) | bytes per proxy (first sync) |"
echo "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
echo
echo "Held per proxy: $held"
echo "$weights"
