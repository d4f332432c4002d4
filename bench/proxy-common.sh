# Shared by bench/proxy.sh and bench/proxy-instructions.sh (sourced, not run): the load
# generator, the release binaries, a work folder cleaned up with every process started, and the
# upstream on 127.0.0.1:$UP.

# shellcheck source=bench/oha.sh
source bench/oha.sh

# PREBUILT=DIR: the binaries in DIR (laid out as target/release is; a build kept from another
# commit, for a before/after comparison) instead of building the working tree.
if [ -z "${PREBUILT:-}" ]; then
  cargo build --release --quiet -p trellis-proxy --bin trellis-proxy --example bench-upstream --example hyper-floor
fi
TARGET="${PREBUILT:-${CARGO_TARGET_DIR:-target}/release}"
PROXY="$(realpath "$TARGET/trellis-proxy")"
UPSTREAM="$(realpath "$TARGET/examples/bench-upstream")"
HYPER_FLOOR="$(realpath "$TARGET/examples/hyper-floor")"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # KEEP_WORK=1: keep the work folder (configs, logs, callgrind outputs) and say where it is.
  if [ -n "${KEEP_WORK:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

UP=18080
# Waits (up to 30 s: a proxy under valgrind starts slowly) until something listens on port $1.
wait_port() {
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on $1" >&2; exit 1
}

# start_upstream [taskset args...]
start_upstream() {
  "$@" "$UPSTREAM" "127.0.0.1:$UP" > /dev/null &
  pids+=($!)
  wait_port $UP
}

# bench_config FILE ENDPOINT_PORT: a Trellis config in which `bench:$UP` goes to
# 127.0.0.1:ENDPOINT_PORT (the upstream, or a server-side proxy's inbound port).
bench_config() {
  cat > "$1" <<YAML
services:
  - { name: bench, ports: [{ port: $UP, protocol: HTTP }] }
virtualHosts:
  - name: bench:$UP
    routes: [{ name: all, forward: { clusters: [{ cluster: bench }] } }]
clusters: [{ name: bench, service: bench }]
endpoints:
  - service: bench
    endpoints: [{ address: 127.0.0.1, port: $2 }]
YAML
}

# start_trellis NAME ENDPOINT_PORT BASE BINARY [launcher...]: a Trellis proxy in explicit mode
# with one worker, on ports BASE (outbound) to BASE+5, whose `bench:$UP` goes to
# 127.0.0.1:ENDPOINT_PORT; its inbound port delivers to 127.0.0.1:<authority port>. Started
# through the launcher when given (e.g. `taskset -c 0`); its pid is in $work/NAME.pids.
start_trellis() {
  local name=$1 endpoint_port=$2 base=$3 binary=$4
  shift 4
  bench_config "$work/$name.yaml" "$endpoint_port"
  RUST_LOG=warn "$@" "$binary" --config "$work/$name.yaml" --concurrency 1 \
    --outbound-port "$base" --inbound-port $((base + 1)) --admin-port $((base + 2)) \
    --readiness-port $((base + 3)) --stats-port $((base + 4)) --status-port $((base + 5)) \
    --explicit-inbound > /dev/null 2>&1 &
  pids+=($!)
  echo $! > "$work/$name.pids"
  wait_port "$base"
}

# nginx_proxy NAME LISTEN_PORT UPSTREAM_PORT: nginx as a keep-alive reverse proxy, one worker on
# CPU 0; the master's and the worker's pids are in $work/NAME.pids.
nginx_proxy() {
  local name=$1 listen=$2 to=$3
  mkdir -p "$work/$name"
  cat > "$work/$name/nginx.conf" <<CONF
worker_processes 1;
worker_cpu_affinity 1;
daemon off;
pid $work/$name/nginx.pid;
error_log $work/$name/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/$name; proxy_temp_path $work/$name; fastcgi_temp_path $work/$name;
  uwsgi_temp_path $work/$name; scgi_temp_path $work/$name;
  upstream up { server 127.0.0.1:$to; keepalive 256; }
  server {
    listen 127.0.0.1:$listen;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
  taskset -c 0 nginx -c "$work/$name/nginx.conf" -p "$work/$name" &
  pids+=($!)
  local master=$!
  wait_port "$listen"
  echo "$master $(pgrep -P "$master" | tr '\n' ' ')" > "$work/$name.pids"
}

cpu_of() { # CPU microseconds (user + system, every thread) of the pids in the files given
  local ns=0 run
  for f in "$@"; do for p in $(cat "$f"); do
    for t in /proc/"$p"/task/*/schedstat; do read -r run _ < "$t"; ns=$((ns + run)); done
  done; done
  echo $((ns / 1000))
}

# floor_proxy NAME LISTEN_PORT UPSTREAM_PORT: hyper's floor (proxy/examples/hyper-floor.rs: a
# hyper server and pooled hyper clients, nothing else) on CPU 0; its pid is in $work/NAME.pids.
floor_proxy() {
  taskset -c 0 "$HYPER_FLOOR" "127.0.0.1:$2" "127.0.0.1:$3" > /dev/null 2>&1 &
  pids+=($!)
  echo $! > "$work/$1.pids"
  wait_port "$2"
}
