#!/usr/bin/env bash
# The single test command: installs what the suite needs when it is missing, then runs every
# test of the workspace. Works on a fresh Debian machine; as root it installs system packages.
#
#   TRELLIS_PRIVILEGED_TESTS=require   tests that need root fail instead of skipping (CI sets it)
#   TRELLIS_SHARED_DIR=DIR             where the steering repo's shared/ is (default: ../shared)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the network tests use, keyed by a file each one installs.
declare -A packages=(
  [iptables]=/usr/sbin/iptables-restore
  [nftables]=/usr/sbin/nft
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [conntrack]=/usr/sbin/conntrack
  [iproute2]=/usr/sbin/ip
  # The image tests (cli/tests/images.rs): umoci assembles and unpacks the images, crun runs them
  # (runc where crun cannot: cgroup v1 with controllers left on the v2 hierarchy), curl calls the
  # injector over TLS.
  [umoci]=/usr/bin/umoci
  [crun]=/usr/bin/crun
  [runc]=/usr/sbin/runc
  [curl]=/usr/bin/curl
  # The dashboard's browser test (cli/tests/dashboard.rs) drives headless Chromium.
  [chromium]=/usr/bin/chromium
)
missing=()
for pkg in "${!packages[@]}"; do
  [ -e "${packages[$pkg]}" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/test.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "scripts/test.sh: missing ${missing[*]} (not root, not installing); tests that need them will say so" >&2
  fi
fi

# The proxy's gRPC interop test talks to a real gRPC client and server: Python's grpcio.
if ! python3 -c 'import grpc' 2>/dev/null; then
  if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
    echo "scripts/test.sh: installing Python grpcio"
    python3 -m pip install -q grpcio >/dev/null 2>&1 || echo "scripts/test.sh: could not install grpcio; the gRPC test will say so" >&2
  else
    echo "scripts/test.sh: no pip to install grpcio; the gRPC test will say so" >&2
  fi
fi

export TRELLIS_SHARED_DIR="${TRELLIS_SHARED_DIR:-$(cd .. && pwd)/shared}"

# cargo prints one "test result" line per test binary, the last often a doc-test run of zero;
# finish with the totals so a reader (or CI) sees at a glance what ran.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "Tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
