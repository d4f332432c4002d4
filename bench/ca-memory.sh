#!/usr/bin/env bash
# trellisd's memory per connected, certified proxy: bench/control-plane.sh's scenarios with
# clients that first obtain a workload certificate through Istio's CreateCertificate and then
# hold their delta xDS stream over the TLS port, beside the same number of plaintext clients,
# with a fresh trellisd each, in the same run. One xDS connection per proxy, as in a real mesh:
#   plain          the plaintext xDS port, no certificate (the baseline)
#   tls            certified; the CSR and then the ADS stream over one TLS connection
#   tls-separate   certified over a TLS connection of its own that stays open beside the ADS
#                  stream's: two connections per proxy, what the proxy does
#
#   bench/ca-memory.sh
#   SCENARIOS="10000:1 10000:1:tls-separate" bench/ca-memory.sh
#
# "KiB per proxy" is the column to read: (RSS with every client connected and trellisd settled
# - RSS after one client) / clients. Everything else is as bench/control-plane.sh describes.
set -euo pipefail
cd "$(dirname "$0")/.."
export SCENARIOS="${SCENARIOS:-1000:1 1000:1:tls 1000:1:tls-separate 5000:1 5000:1:tls 5000:1:tls-separate}"
exec bench/control-plane.sh
