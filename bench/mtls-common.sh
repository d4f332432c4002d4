# Shared by bench/proxy.sh and bench/handshakes.sh (sourced after bench/proxy-common.sh, not run):
# nginx (installed when missing and root), trellisd as the mesh's CA on loopback, Trellis proxies
# with a mesh identity, nginx with mutual TLS, and the certificates nginx uses.

# nginx rows appear when nginx is installed; as root, install it (Debian's nginx-light).
ensure_nginx() {
  command -v nginx > /dev/null && return 0
  [ "$(id -u)" = 0 ] || return 0
  if apt-cache show nginx-light > /dev/null 2>&1; then
    echo "installing nginx-light..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light > /dev/null ||
      echo "apt-get install nginx-light failed: no nginx rows" >&2
  fi
}

cargo build --release --quiet -p trellis-control-plane --bin trellisd
TRELLISD="$(realpath "${CARGO_TARGET_DIR:-target}/release/trellisd")"

# start_ca: trellisd in file mode (an empty config directory) on loopback, as the CA only: a
# generated root written to $CA_ROOT, a static token file with two accounts (bench/server and
# bench/client; their tokens in $work/ca/ACCOUNT.token), its TLS port in $CA_ADDRESS. On CPU 1
# with the upstream and the load generator: it is idle once the proxies are certified (they
# renew at half of 24 h).
start_ca() {
  mkdir -p "$work/ca/config"
  printf '%s\n' "server-token,system:serviceaccount:bench:server,uid-server" \
    "client-token,system:serviceaccount:bench:client,uid-client" > "$work/ca/tokens.csv"
  echo server-token > "$work/ca/server.token"
  echo client-token > "$work/ca/client.token"
  CA_ROOT="$work/ca/root-cert.pem"
  taskset -c 1 "$TRELLISD" --config-dir "$work/ca/config" --xds-address 127.0.0.1:0 \
    --monitoring-address 127.0.0.1:0 --token-auth-file "$work/ca/tokens.csv" \
    --root-cert-file "$CA_ROOT" --log-level warn > "$work/ca/out" 2> "$work/ca/err" &
  pids+=($!)
  local pid=$! line
  for _ in $(seq 300); do
    line=$(grep -m1 '^trellisd listening' "$work/ca/out" 2>/dev/null || true)
    [ -n "$line" ] && [ -s "$CA_ROOT" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$line" ] || [ ! -s "$CA_ROOT" ]; then
    echo "trellisd (the CA) did not start: $(tail -5 "$work/ca/err")" >&2
    exit 1
  fi
  # "trellisd listening: xds A monitoring B secure C"
  CA_ADDRESS=$(awk '{ print $8 }' <<< "$line")
}

# Waits (up to 30 s) until the proxy NAME's readiness port $2 answers /healthz/ready with 200:
# for a proxy with an identity, ready means certified.
wait_ready() {
  local name=$1 port=$2 code
  for _ in $(seq 300); do
    code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$port/healthz/ready" || true)
    [ "$code" = 200 ] && return 0
    sleep 0.1
  done
  echo "$name is not ready (last answer $code): $(tail -5 "$work/$name.log")" >&2
  exit 1
}

# client_config FILE ENDPOINT_PORT MTLS MAX_REQUESTS: the client-side proxy's config: `bench:$UP`
# goes to 127.0.0.1:ENDPOINT_PORT (the server-side proxy's inbound port); MTLS=1: over the mesh's
# mutual TLS, the server being bench/server; MAX_REQUESTS: requests per upstream connection
# (0: no limit; 1: a new connection, and so a new handshake, for every request).
client_config() {
  local file=$1 port=$2 mtls=$3 max_requests=$4 pool="" tls="" accounts=""
  [ "$max_requests" != 0 ] && pool=", connectionPool: { maxRequestsPerConnection: $max_requests }"
  if [ "$mtls" = 1 ]; then
    tls=", meshTls: true"
    accounts='    serviceAccounts: ["spiffe://cluster.local/ns/bench/sa/server"]'
  fi
  cat > "$file" <<YAML
services:
  - { name: bench, ports: [{ port: $UP, protocol: HTTP }] }
virtualHosts:
  - name: bench:$UP
    routes: [{ name: all, forward: { clusters: [{ cluster: bench }] } }]
clusters: [{ name: bench, service: bench$pool }]
endpoints:
  - service: bench
$accounts
    endpoints: [{ address: 127.0.0.1, port: $port$tls }]
YAML
}

# server_config FILE MTLS: the server-side proxy's config (its inbound port delivers to the
# upstream); MTLS=1: inbound STRICT, only mutual TLS from the mesh accepted.
server_config() {
  bench_config "$1" "$UP"
  [ "$2" = 1 ] && echo "inboundTls: { mode: STRICT }" >> "$1"
  return 0
}

# trellis_proxy NAME CONFIG BASE [ACCOUNT]: a Trellis proxy on CPU 0 with one worker, on ports
# BASE (outbound) to BASE+5 as in start_trellis; with ACCOUNT, a mesh identity
# (spiffe://cluster.local/ns/bench/sa/ACCOUNT) certified by the CA of start_ca, and waited for
# until ready. Its pid is in $work/NAME.pids, its log in $work/NAME.log.
trellis_proxy() {
  local name=$1 config=$2 base=$3 account=${4:-} identity=()
  if [ -n "$account" ]; then
    identity=(--ca-address "$CA_ADDRESS" --ca-root-cert "$CA_ROOT" --token-file "$work/ca/$account.token")
  fi
  SERVICE_ACCOUNT=$account POD_NAMESPACE=bench RUST_LOG=warn taskset -c 0 "$PROXY" --config "$config" \
    --concurrency 1 --outbound-port "$base" --inbound-port $((base + 1)) --admin-port $((base + 2)) \
    --readiness-port $((base + 3)) --stats-port $((base + 4)) --status-port $((base + 5)) \
    --explicit-inbound "${identity[@]}" > "$work/$name.log" 2>&1 &
  pids+=($!)
  echo $! > "$work/$name.pids"
  wait_port "$base"
  [ -n "$account" ] && wait_ready "$name" $((base + 3))
  return 0
}

# nginx_certs: an EC P-256 CA and two leaves it signs (server.bench and client.bench, each also
# with the SPIFFE ID a mesh certificate would carry) in $work/pki, for nginx's mutual TLS.
nginx_certs() {
  local dir="$work/pki" leaf
  mkdir -p "$dir"
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$dir/ca.key" -subj /CN=bench-ca -days 2 -out "$dir/ca.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  for leaf in server client; do
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/$leaf.key" \
      -subj "/CN=$leaf.bench" -out "$dir/$leaf.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=DNS:$leaf.bench,URI:spiffe://cluster.local/ns/bench/sa/$leaf" \
      "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth,clientAuth" > "$dir/$leaf.ext"
    openssl x509 -req -in "$dir/$leaf.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
      -days 2 -extfile "$dir/$leaf.ext" -out "$dir/$leaf.pem" 2>/dev/null
  done
}

# nginx_with NAME LISTEN_PORT < HTTP_BLOCK: nginx with one worker on CPU 0, the http block's
# contents read from stdin; the master's and the worker's pids in $work/NAME.pids.
nginx_with() {
  local name=$1 listen=$2
  mkdir -p "$work/$name"
  {
    cat <<CONF
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
CONF
    cat
    echo "}"
  } > "$work/$name/nginx.conf"
  taskset -c 0 nginx -c "$work/$name/nginx.conf" -p "$work/$name" &
  pids+=($!)
  local master=$!
  wait_port "$listen"
  echo "$master $(pgrep -P "$master" | tr '\n' ' ')" > "$work/$name.pids"
}

# nginx_mtls_server NAME LISTEN_PORT: nginx terminating mutual TLS (TLS 1.3, a client
# certificate of the bench CA required) and passing requests on to the upstream over keep-alive
# connections. Downstream connections are kept for 100,000 requests (nginx's default, 1,000,
# would add a handshake every 1,000 requests to the keep-alive runs).
nginx_mtls_server() {
  local pki="$work/pki"
  nginx_with "$1" "$2" <<CONF
  keepalive_requests 100000;
  keepalive_timeout 300s;
  upstream app { server 127.0.0.1:$UP; keepalive 256; keepalive_requests 100000; }
  server {
    listen 127.0.0.1:$2 ssl;
    ssl_certificate $pki/server.pem;
    ssl_certificate_key $pki/server.key;
    ssl_client_certificate $pki/ca.pem;
    ssl_verify_client on;
    ssl_protocols TLSv1.3;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
CONF
}

# nginx_mtls_client NAME LISTEN_PORT UPSTREAM_PORT KEEPALIVE SESSION_REUSE: nginx originating
# mutual TLS to the server-side nginx (its client certificate, the server verified against the
# bench CA as server.bench, TLS 1.3). KEEPALIVE=1: a pool of 256 kept-alive upstream connections;
# 0: a new connection per request. SESSION_REUSE on|off: resume TLS sessions (on) or do a full
# handshake every time (off).
nginx_mtls_client() {
  local pki="$work/pki" keepalive=""
  [ "$4" = 1 ] && keepalive="keepalive 256; keepalive_requests 100000;"
  nginx_with "$1" "$2" <<CONF
  upstream up { server 127.0.0.1:$3; $keepalive }
  server {
    listen 127.0.0.1:$2;
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
      proxy_ssl_session_reuse $5;
    }
  }
CONF
}

# nginx_plain NAME LISTEN_PORT UPSTREAM_PORT KEEPALIVE: nginx_proxy's reverse proxy, with (1) or
# without (0) kept-alive upstream connections.
nginx_plain() {
  local keepalive=""
  [ "$4" = 1 ] && keepalive="keepalive 256;"
  nginx_with "$1" "$2" <<CONF
  upstream up { server 127.0.0.1:$3; $keepalive }
  server {
    listen 127.0.0.1:$2;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
CONF
}
