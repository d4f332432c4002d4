#!/usr/bin/env bash
# What authorization costs the server-side proxy of an mTLS pair: user-space instructions per
# request (callgrind, which hardly moves with what else the machine is doing), with no policy,
# with 10, 100 and 1,000 ALLOW rules, and with JWT validation (RequestAuthentication plus a
# policy on the token's principal).
#
#   bench/authz.sh
#   SMALL=500 LARGE=2500 bench/authz.sh
#
# The pair: a client-side Trellis proxy (identity bench/client, not under valgrind) dials the
# server-side one (bench/server, STRICT, under callgrind) over the mesh's mutual TLS, certified
# by trellisd's CA on loopback. Rule i of N allows principal cluster.local/ns/bench/sa/caller-i
# on paths /api/i/*; the last one allows bench/client on /* — the request matches only the
# last rule, the worst place for a scan. The JWT run signs one ES256 token (Python's
# `cryptography`) that every request carries, as a client reusing its token does.
# Per request = (instructions(LARGE) - instructions(SMALL)) / (LARGE - SMALL) over 10
# keep-alive connections, which removes start-up and the handshakes.
set -euo pipefail
cd "$(dirname "$0")/.."

SMALL="${SMALL:-500}"
LARGE="${LARGE:-2500}"
command -v valgrind > /dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
python3 -c 'import cryptography' 2> /dev/null || { echo "needs Python's cryptography (pip install cryptography)" >&2; exit 1; }
# shellcheck source=bench/proxy-common.sh
source bench/proxy-common.sh
# shellcheck source=bench/mtls-common.sh
source bench/mtls-common.sh
start_upstream
start_ca
SERVER_INBOUND=18201
client_config "$work/client.yaml" $SERVER_INBOUND 1 0
trellis_proxy client "$work/client.yaml" 18300 client

# A JWKS and a token for the JWT run.
python3 - "$work" <<'PY'
import base64, json, sys, time
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
work = sys.argv[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
key = ec.generate_private_key(ec.SECP256R1())
numbers = key.public_key().public_numbers()
jwk = {"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
       "x": b64(numbers.x.to_bytes(32, "big")), "y": b64(numbers.y.to_bytes(32, "big"))}
header = b64(json.dumps({"alg": "ES256", "kid": "k1", "typ": "JWT"}).encode())
claims = b64(json.dumps({"iss": "https://issuer.bench", "sub": "alice", "aud": "bench",
                         "exp": int(time.time()) + 3600, "scope": "read write"}).encode())
r, s = decode_dss_signature(key.sign(f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256())))
open(f"{work}/jwks.json", "w").write(json.dumps({"keys": [jwk]}))
open(f"{work}/token", "w").write(f"{header}.{claims}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}")
PY

# policies FILE N: the server's config with N ALLOW rules (none: no policy).
policies() {
  local file=$1 n=$2
  server_config "$file" 1
  [ "$n" = 0 ] && return 0
  python3 - "$file" "$n" <<'PY'
import sys
file, n = sys.argv[1], int(sys.argv[2])
rules = [f'      - {{ index: {i}, from: [{{ principals: ["cluster.local/ns/bench/sa/caller-{i}"] }}], to: [{{ paths: ["/api/{i}/*"] }}] }}'
         for i in range(n - 1)]
rules.append(f'      - {{ index: {n - 1}, from: [{{ principals: ["cluster.local/ns/bench/sa/client"] }}], to: [{{ paths: ["/*"] }}] }}')
with open(file, "a") as f:
    f.write("authorization:\n  - namespace: bench\n    name: allow-many\n    rules:\n" + "\n".join(rules) + "\n")
PY
}

# jwt_policies FILE: RequestAuthentication and an ALLOW policy on the token's principal.
jwt_policies() {
  server_config "$1" 1
  cat >> "$1" <<YAML
jwtProviders:
  - { source: bench/jwt, issuer: "https://issuer.bench", audiences: [bench], jwks: '$(cat "$work/jwks.json")' }
authorization:
  - namespace: bench
    name: token-holders
    rules: [{ from: [{ requestPrincipals: ["https://issuer.bench/*"] }], when: [{ key: "request.auth.claims[scope]", values: [read] }] }]
YAML
}

# instructions NAME REQUESTS CONFIG: the server proxy's total instructions serving REQUESTS.
instructions() {
  local name=$1 requests=$2 config=$3 header=()
  local out="$work/$name-$requests.callgrind"
  [ "$name" = jwt ] && header=(-H "authorization: Bearer $(cat "$work/token")")
  SERVICE_ACCOUNT=server POD_NAMESPACE=bench RUST_LOG=warn valgrind --tool=callgrind \
    --callgrind-out-file="$out" "$PROXY" --config "$config" --concurrency 1 --outbound-port 18200 \
    --inbound-port $SERVER_INBOUND --admin-port 18202 --readiness-port 18203 --stats-port 18204 \
    --status-port 18205 --explicit-inbound --ca-address "$CA_ADDRESS" --ca-root-cert "$CA_ROOT" \
    --token-file "$work/ca/server.token" > /dev/null 2> "$work/$name.valgrind" &
  local pid=$!
  pids+=($pid)
  wait_port $SERVER_INBOUND
  wait_ready "server" 18203
  local answered
  answered=$("$OHA" --no-tui --output-format json -n "$requests" -c 10 -H "host: bench:$UP" "${header[@]}" \
    "http://127.0.0.1:18300/items" | python3 -c 'import json,sys; print(json.load(sys.stdin)["statusCodeDistribution"].get("200", 0))')
  [ "$answered" = "$requests" ] || { echo "$name: $answered of $requests answered 200" >&2; exit 1; }
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

for run in none 10 100 1000 jwt; do
  case $run in
    none) policies "$work/$run.yaml" 0 ;;
    jwt) jwt_policies "$work/$run.yaml" ;;
    *) policies "$work/$run.yaml" "$run" ;;
  esac
  small=$(instructions "$run" "$SMALL" "$work/$run.yaml")
  large=$(instructions "$run" "$LARGE" "$work/$run.yaml")
  echo "$run $(( (large - small) / (LARGE - SMALL) ))" >> "$work/results"
done

echo "Server-side proxy of an mTLS pair: user-space instructions per request (callgrind; HTTP/1.1"
echo "keep-alive, 10 connections, $SMALL vs $LARGE requests)."
echo
echo "| policy | instructions per request | over no policy |"
echo "|---|---:|---:|"
base=$(awk '$1 == "none" {print $2}' "$work/results")
while read -r name count; do
  label=$name
  case $name in none) label="no policy" ;; jwt) label="JWT (ES256, cached) + 1 ALLOW rule" ;; *) label="$name ALLOW rules" ;; esac
  echo "| $label | $count | $(awk -v a="$count" -v b="$base" 'BEGIN {printf "%+.1f%%", (a - b) * 100 / b}') |"
done < "$work/results"
