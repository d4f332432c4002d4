#!/usr/bin/env bash
# Cross-checks the chart renderer built into `trellis` (cli/src/chart) against Go's own
# text/template, Sprig and go-yaml (scripts/chart-reference, what Helm is built on): renders
# charts/trellis with the value sets of cli/tests/chart_render.rs both ways and requires the same
# text from every template and the same objects.
#
# Not part of scripts/test.sh: Debian's Go toolchain and Sprig are about 85 MiB to download and
# 500 MiB installed. As root this script installs them when they are missing (apt-get); the test
# itself (chart_matches_go_templates) runs in `cargo test` whenever they are present, and says it
# was skipped when they are not.
#
#   scripts/chart-crosscheck.sh            install if needed (root), then run the cross-check
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v2-dev)
if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/github.com/Masterminds/sprig ] \
  || [ ! -d /usr/share/gocode/src/gopkg.in/yaml.v2 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/chart-crosscheck.sh: installing ${packages[*]}"
    timeout 900 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  else
    echo "scripts/chart-crosscheck.sh: needs ${packages[*]} (run as root to install them)" >&2
    exit 1
  fi
fi

# The test fails, instead of skipping, if the reference renderer cannot be built.
TRELLIS_CHART_CROSSCHECK=require timeout 1800 \
  cargo test -p trellis-cli --locked --test chart_render chart_matches_go_templates -- --nocapture
