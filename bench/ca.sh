#!/usr/bin/env bash
# The CA's signing rate on one core: certificates per second (CSR parsed and verified, leaf
# signed), from the release build. Usage: bench/ca.sh [seconds per run, default 3] [runs, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-3}"
runs="${2:-3}"
cargo build --release --quiet -p trellis-identity --example ca-sign
bin="${CARGO_TARGET_DIR:-target}/release/examples/ca-sign"
printf '%-28s %10s %12s %10s\n' "what" "signed" "per second" "µs each"
for _ in $(seq "$runs"); do
  taskset -c 0 "$bin" "$seconds"
done
