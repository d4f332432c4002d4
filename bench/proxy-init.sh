#!/usr/bin/env bash
# proxy-init benchmark: time to apply the redirect, per backend (root; makes and removes its own
# network namespaces).
#
#   bench/proxy-init.sh            # 20 runs per row
#   RUNS=50 bench/proxy-init.sh
#
# Each row is timed from process start to exit, through `ip netns exec`, so every row pays the
# same namespace entry. Baseline rows feed the exact text trellis-proxy-init would apply (its
# --dry-run output) straight to the tool; the difference is what trellis-proxy-init adds
# (settings, reading the current state, rendering, starting the tool).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-20}"
[ "$(id -u)" = 0 ] || { echo "bench/proxy-init.sh needs root (network namespaces)" >&2; exit 1; }

cargo build --release --quiet -p trellis-proxy-init
BIN="$(realpath "${CARGO_TARGET_DIR:-target}/release/trellis-proxy-init")"

work=$(mktemp -d)
ns="trellis-bench-$$"
cleanup() {
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Milliseconds (3 decimals) that "$@" takes inside a namespace, fresh unless REUSE=1.
timed() {
  if [ "${REUSE:-0}" != 1 ]; then ip netns del "$ns" 2>/dev/null || true; ip netns add "$ns"; fi
  local start end
  start=$(date +%s%N)
  ip netns exec "$ns" "$@" >/dev/null
  end=$(date +%s%N)
  awk -v ns="$((end - start))" 'BEGIN { printf "%.3f\n", ns / 1000000 }'
}

# The same, in a namespace where the rules are already in place (a container restart).
again() {
  ip netns del "$ns" 2>/dev/null || true
  ip netns add "$ns"
  ip netns exec "$ns" "$BIN" "$@"
  REUSE=1 timed "$BIN" "$@"
}

# Runs a row RUNS times and prints median, p90 and max.
row() {
  local label="$1"; shift
  local samples=()
  for _ in $(seq "$RUNS"); do samples+=("$("$@")"); done
  printf '%s\n' "${samples[@]}" | sort -n | awk -v label="$label" '
    { v[NR] = $1 }
    END { printf "| %s | %d | %.2f | %.2f | %.2f |\n", label, NR, v[int((NR + 1) / 2)], v[int(NR * 0.9 + 0.5)], v[NR] }'
}

"$BIN" --backend nft --dry-run > "$work/v4.nft"
"$BIN" --backend nft --dry-run --ipv6 > "$work/dual.nft"
"$BIN" --backend iptables --dry-run | sed '1d' > "$work/v4.iptables"

echo "proxy-init apply time, $RUNS runs per row ($(nproc) CPUs, $(uname -r), $(nft --version), $(iptables --version))"
echo
echo "| what | runs | median ms | p90 ms | max ms |"
echo "|---|---:|---:|---:|---:|"
row "nft -f, default rule set (baseline)" timed nft -f "$work/v4.nft"
row "trellis-proxy-init --backend nft, default, fresh namespace" timed "$BIN" --backend nft
row "trellis-proxy-init --backend nft, default, applied again" again --backend nft
row "trellis-proxy-init --backend nft, dual-stack + DNS" timed "$BIN" --backend nft --ipv6 --capture-dns
row "trellis-proxy-init (backend detected), default" timed "$BIN"
row "iptables-restore --noflush, default rule set (baseline)" timed iptables-restore --noflush "$work/v4.iptables"
row "trellis-proxy-init --backend iptables, default, fresh namespace" timed "$BIN" --backend iptables
row "trellis-proxy-init --backend iptables, default, applied again" again --backend iptables
row "trellis-proxy-init --backend iptables, dual-stack + DNS" timed "$BIN" --backend iptables --ipv6 --capture-dns
