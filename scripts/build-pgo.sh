#!/usr/bin/env bash
# Builds the sidecar proxy with profile-guided optimization (PGO) and prints the binary's path.
#
#   scripts/build-pgo.sh              # -> target/pgo/release/trellis-proxy
#
# Why: at a sidecar's usual load (a request every millisecond or so, the CPU shared with the
# app), the proxy's code is mostly out of the CPU's caches when a request comes, and what a
# request costs is largely fetching that code. PGO tells LLVM which paths are hot, so it lays
# them out together and moves the rest aside. Measured (bench/RESULTS.md, "Proxy, fourth day"):
# the pair's added p50 at 1,000 req/s fell by about an eighth; instructions per request barely
# moved.
#
# Three steps, about ten minutes on two cores:
#   1. an instrumented build (its own target folder);
#   2. training: the instrumented proxy as a client-side plus server-side pair, under HTTP/1.1
#      load at 1, 10 and 50 connections and HTTP/2 load (oha, bench-upstream), as the mesh
#      path runs. Paths the training does not take (opaque TCP and TLS passthrough, which need
#      the iptables capture; retries) are laid out as cold: their behaviour is the same, their
#      speed against the plain build has not been measured;
#   3. the optimized build, from the merged profile (rustup's llvm-tools, added when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  rustup component add llvm-tools >&2
fi

# shellcheck source=bench/proxy-common.sh
source bench/proxy-common.sh # the upstream, oha, a work folder cleaned up on exit
target="${CARGO_TARGET_DIR:-target}"

echo "PGO 1/3: instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$work/build-profiles" CARGO_TARGET_DIR="$target/pgo-train" \
  cargo build --release --locked --quiet -p trellis-proxy --bin trellis-proxy >&2
instrumented="$target/pgo-train/release/trellis-proxy"

echo "PGO 2/3: training" >&2
start_upstream
both=18090
"$UPSTREAM" "127.0.0.1:$both" both > /dev/null &
pids+=($!)
wait_port $both
# The instrumented proxies write their profiles here when they exit.
export LLVM_PROFILE_FILE="$work/profiles/%p.profraw"
training=()
# pair_member NAME ENDPOINT_PORT BASE: one instrumented proxy (see start_trellis).
pair_member() {
  start_trellis "$1" "$2" "$3" "$instrumented"
  training+=("$(cat "$work/$1.pids")")
}
pair_member server 18080 18200
pair_member client 18201 18300
# load ARGS...: an oha run that must be answered 200 throughout (else the training was wrong).
load() {
  local ok
  ok=$("$OHA" --no-tui --output-format json -n 20000 -H "host: bench:$UP" "$@" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["statusCodeDistribution"].get("200", 0))')
  [ "$ok" = 20000 ] || { echo "training load $*: $ok of 20000 answered 200" >&2; exit 1; }
}
for connections in 1 10 50; do
  load -c "$connections" http://127.0.0.1:18300/
done
# HTTP/2 end to end: a second pair for a service on the port of the upstream that speaks it
# (the server side delivers to the authority's port); oha names it in :authority.
UP=$both pair_member server-h2 "$both" 18400
UP=$both pair_member client-h2 18401 18500
UP=$both load --http2 -c 4 -p 8 --connect-to "bench:$both:127.0.0.1:18500" "http://bench:$both/"
# The profile is written when the proxy exits.
for pid in "${training[@]}"; do kill -TERM "$pid"; done
for pid in "${training[@]}"; do wait "$pid" || true; done
unset LLVM_PROFILE_FILE
ls "$work"/profiles/*.profraw > /dev/null

mkdir -p "$target/pgo"
merged="$target/pgo/merged.profdata"
"$profdata" merge -o "$merged" "$work/profiles"
# The profile's hash in the flags: cargo rebuilds when the profile changes, not only the code.
hash=$(sha256sum "$merged" | cut -c1-16)
profile="$target/pgo/trellis-proxy-$hash.profdata"
rm -f "$target"/pgo/trellis-proxy-*.profdata
mv "$merged" "$profile"
profile=$(realpath "$profile")

echo "PGO 3/3: optimized build" >&2
RUSTFLAGS="-Cprofile-use=$profile -Cllvm-args=-pgo-warn-missing-function=false" \
  CARGO_TARGET_DIR="$target/pgo" cargo build --release --locked --quiet -p trellis-proxy --bin trellis-proxy >&2
realpath "$target/pgo/release/trellis-proxy"
