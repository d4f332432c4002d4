#!/usr/bin/env bash
# Injector benchmark: HTTPS with keep-alive, a realistic 3-container pod.
#
#   bench/injector.sh              # 15 s per scenario, 500/s for the fixed-rate runs
#   DURATION=30 RATE=1000 bench/injector.sh
#   INJECTOR=/tmp/trellis-injector bench/injector.sh   # a given build
#
# The injector runs on CPU 0 with one worker thread ("one core"); the load generator (oha) runs
# on CPU 1. Each measurement is paired with a baseline in the same run: GET /healthz on the same
# server, which pays for TLS, HTTP and routing but not for injection. Needs taskset, openssl,
# python3 and oha (installed with cargo when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-15}"
RATE="${RATE:-500}"
CONNECTIONS="${CONNECTIONS:-16}"

# shellcheck source=bench/oha.sh
source bench/oha.sh

# INJECTOR=path measures that build instead (e.g. to compare two).
if [ -z "${INJECTOR:-}" ]; then
  cargo build --release --quiet -p trellis-injector
fi
BIN="${INJECTOR:-${CARGO_TARGET_DIR:-target}/release/trellis-injector}"

work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# A CA and a serving certificate for 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=trellis-injector \
  -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$work/san.ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
  -days 1 -extfile "$work/san.ext" -out "$work/tls.crt" 2>/dev/null

# An AdmissionReview for a pod with an app, a cache and a log shipper, probes and ports.
python3 - "$work/review.json" <<'PY'
import json, sys
container = lambda name, image, port: {
    "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
    "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
    "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 5},
    "env": [{"name": "LOG_LEVEL", "value": "info"}],
    "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}],
    "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
}
pod = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"generateName": "checkout-7c9d5b8f6-", "namespace": "shop",
                 "labels": {"app": "checkout", "version": "v3", "pod-template-hash": "7c9d5b8f6"},
                 "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-7c9d5b8f6",
                                      "uid": "6d0c4a65-8a3b-4c1d-9a31-0b0d2f6a9e10", "controller": True, "blockOwnerDeletion": True}]},
    "spec": {"serviceAccountName": "checkout", "containers": [
        container("checkout", "registry.example.com/shop/checkout:3.2.1", 8080),
        container("cache", "redis:7", 6379),
        container("logs", "fluent/fluent-bit:3.0", 2020)],
        "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}]},
}
review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
    "uid": "7f0b2a4e-3c1d-4e5f-8a9b-0c1d2e3f4a5b",
    "kind": {"group": "", "version": "v1", "kind": "Pod"},
    "resource": {"group": "", "version": "v1", "resource": "pods"},
    "namespace": "shop", "operation": "CREATE",
    "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
    "object": pod, "dryRun": False}}
json.dump(review, open(sys.argv[1], "w"))
# One review per line for oha -Z. 5,000 different workloads with the same sidecar settings (they
# share one template render), and 5,000 pods each with different settings (every render is
# new, so the injector parses the template's output every time: the worst case).
import copy
def variants(path, change):
    with open(path, "w") as out:
        for i in range(5000):
            r = copy.deepcopy(review)
            change(r["request"]["object"], i)
            out.write(json.dumps(r) + "\n")
def new_workload(p, i):
    p["metadata"]["generateName"] = f"checkout-{i}-7c9d5b8f6-"
    p["metadata"]["labels"]["app"] = f"checkout-{i}"
    p["metadata"]["ownerReferences"][0]["name"] = f"checkout-{i}-7c9d5b8f6"
def new_settings(p, i):
    p["metadata"]["annotations"] = {"sidecar.istio.io/proxyCPU": f"{100 + i}m"}
variants(sys.argv[1].replace(".json", "-workloads.jsonl"), new_workload)
variants(sys.argv[1].replace(".json", "-settings.jsonl"), new_settings)
PY

TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c 0 "$BIN" --listen 127.0.0.1:0 \
  --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" > "$work/stdout" &
pid=$!
for _ in $(seq 100); do grep -q "^listening on" "$work/stdout" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/stdout")
[ -n "$addr" ] || { echo "the injector did not start" >&2; exit 1; }

cpu_seconds() { awk '{print ($14 + $15) / 100}' "/proc/$pid/stat"; }

# run NAME METHOD PATH oha-args...: one scenario, recorded as JSON with the injector's CPU use.
run() {
  local name=$1 method=$2 path=$3; shift 3
  local body=()
  case "$method" in
    POST) body=(-D "$work/review.json" -H "content-type: application/json") ;;
    POST-WORKLOADS) method=POST; body=(-Z "$work/review-workloads.jsonl" -H "content-type: application/json") ;;
    POST-SETTINGS) method=POST; body=(-Z "$work/review-settings.jsonl" -H "content-type: application/json") ;;
  esac
  local before; before=$(cpu_seconds)
  taskset -c 1 "$OHA" --no-tui --output-format json --cacert "$work/ca.crt" -m "$method" "${body[@]}" \
    -z "${DURATION}s" "$@" "https://$addr$path" > "$work/$name.json"
  echo "$(cpu_seconds) $before" > "$work/$name.cpu"
}

# Check once that the request really injects before measuring it.
curl -sf --cacert "$work/ca.crt" -H 'content-type: application/json' --data-binary "@$work/review.json" \
  "https://$addr/inject" | python3 -c 'import json,sys; r=json.load(sys.stdin)["response"]; assert r["allowed"] and r["patchType"]=="JSONPatch", r'

run health-max GET /healthz -c "$CONNECTIONS"
run inject-max POST /inject -c "$CONNECTIONS"
run workloads-max POST-WORKLOADS /inject -c "$CONNECTIONS"
run settings-max POST-SETTINGS /inject -c "$CONNECTIONS"
run health-rate GET /healthz -c 8 -q "$RATE" --latency-correction
run inject-rate POST /inject -c 8 -q "$RATE" --latency-correction
run workloads-rate POST-WORKLOADS /inject -c 8 -q "$RATE" --latency-correction
run settings-rate POST-SETTINGS /inject -c 8 -q "$RATE" --latency-correction
rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")

python3 - "$work" "$RATE" "$rss_kb" <<'PY'
import json, os, sys
work, rate, rss = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [("health-max", "GET /healthz, max rate (baseline)"),
        ("inject-max", "POST /inject, max rate (pods of one workload)"),
        ("workloads-max", "POST /inject, max rate (every pod a new workload)"),
        ("settings-max", "POST /inject, max rate (every pod new sidecar settings: worst case)"),
        ("health-rate", f"GET /healthz at {rate}/s (baseline)"),
        ("inject-rate", f"POST /inject at {rate}/s (pods of one workload)"),
        ("workloads-rate", f"POST /inject at {rate}/s (every pod a new workload)"),
        ("settings-rate", f"POST /inject at {rate}/s (every pod new sidecar settings: worst case)")]
print(f"| scenario | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | non-2xx | injector CPU µs/req |")
print(f"|---|---:|---:|---:|---:|---:|---:|---:|")
for key, label in rows:
    r = json.load(open(os.path.join(work, key + ".json")))
    s, p = r["summary"], r["latencyPercentiles"]
    codes = r.get("statusCodeDistribution", {})
    total = sum(codes.values())
    bad = total - sum(v for k, v in codes.items() if k.startswith("2"))
    after, before = map(float, open(os.path.join(work, key + ".cpu")).read().split())
    cpu_us = (after - before) / max(total, 1) * 1e6
    ms = lambda q: f"{p[q] * 1000:.3f}" if p.get(q) is not None else "-"
    print(f"| {label} | {s['requestsPerSec']:.0f} | {ms('p50')} | {ms('p90')} | {ms('p99')} | {ms('p99.9')} | {bad} | {cpu_us:.0f} |")
print(f"\ninjector peak RSS: {rss / 1024:.1f} MiB")
PY
