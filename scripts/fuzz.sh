#!/usr/bin/env bash
# Fuzzes every parser of outside input (fuzz/fuzz_targets, one cargo-fuzz target each) for a
# bounded time, one target after the other, and prints what each did. Not run by CI or by
# scripts/test.sh: run it by hand, e.g. before a release or after changing a parser.
#
#   scripts/fuzz.sh                      every target, 60 s each
#   scripts/fuzz.sh 300 csr spiffe_id    those two, 5 minutes each
#
#   FUZZ_SANITIZER=address   build with AddressSanitizer (default: none; the parsers are safe Rust,
#                            and without it a target runs several times faster)
#   FUZZ_RSS_LIMIT_MB=N      memory limit of a target (default 2048)
#
# The corpus of each target grows in fuzz/corpus/<target> (kept between runs, not in git); it
# starts from fuzz/seeds/<target> and the repository's real inputs (examples, test fixtures, and
# the Istio conformance corpus in ../shared when it is there). A crash, panic, timeout or
# out-of-memory stops that target, is saved under fuzz/artifacts/<target>/, and makes the script
# exit 1 after the others have run; reproduce one with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
# Exit 2: bad arguments, or the targets do not build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${1:-60}
[ $# -gt 0 ] && shift
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [seconds-per-target] [target...]" >&2
  exit 2
fi
sanitizer=${FUZZ_SANITIZER:-none}
rss_limit=${FUZZ_RSS_LIMIT_MB:-2048}
shared=${TRELLIS_SHARED_DIR:-$(cd .. && pwd)/shared}

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "scripts/fuzz.sh: installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "scripts/fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# fuzz/ is a workspace of its own with its lock file out of git: start it from the main one, so
# that the targets build the dependency versions the workspace is tested with.
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock

# Every target is built with the same flags it is run with (a change of flags rebuilds all):
# debug assertions on, so that integer overflow in a parser is a crash rather than a wrong value.
flags=(--sanitizer "$sanitizer" --debug-assertions)
features=()
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
echo "scripts/fuzz.sh: building the fuzz targets (sanitizer: $sanitizer)"
if ! cargo +nightly fuzz build "${flags[@]}" >"$build_log" 2>&1; then
  # The proxy is the crate most often mid-change; the other targets need not wait for it.
  if grep -q "could not compile \`trellis-proxy\`" "$build_log" &&
    cargo +nightly fuzz build "${flags[@]}" --no-default-features >"$build_log" 2>&1; then
    features=(--no-default-features)
    echo "scripts/fuzz.sh: trellis-proxy does not build: its targets are skipped" >&2
  else
    cat "$build_log" >&2
    echo "scripts/fuzz.sh: the fuzz targets do not build" >&2
    exit 2
  fi
fi

# Targets that need the proxy crate (fuzz/Cargo.toml, required-features = ["proxy"]).
proxy_targets=" xds_config proxy_config_file probes jwt trace_context dns_query "
mapfile -t available < <(cargo +nightly fuzz list)
if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=("${available[@]}")
fi
for t in "${targets[@]}"; do
  if ! printf '%s\n' "${available[@]}" | grep -qx "$t"; then
    echo "scripts/fuzz.sh: no target $t; the targets: ${available[*]}" >&2
    exit 2
  fi
done

# Real inputs of each parser, besides fuzz/seeds/<target>: directories (read recursively) and
# files. Missing ones are skipped (../shared is not on every machine).
seed_sources() {
  case "$1" in
    config_yaml)
      echo examples/demo/istio api/tests/fixtures "$shared/examples/seed-resources"
      echo "$shared/istio-conformance/valid" "$shared/istio-conformance/invalid"
      echo "$shared/istio-conformance/mixed" "$shared/istio-conformance/other-kinds" ;;
    mesh_config) echo examples/demo/mesh.yaml ;;
    inject_manifests)
      echo injector/tests/golden examples/demo/pods.yaml "$shared/istio-conformance/inject" ;;
    proxy_config_file) echo examples/proxy ;;
  esac
}

# Copies the seeds of a target into one flat directory (libFuzzer takes directories, and runs a
# file argument as a single input instead).
stage_seeds() {
  local target=$1 dir=$2 n=0 src f
  rm -rf "$dir"
  mkdir -p "$dir"
  for src in "fuzz/seeds/$target" $(seed_sources "$target"); do
    [ -e "$src" ] || continue
    while IFS= read -r -d '' f; do
      n=$((n + 1))
      cp "$f" "$dir/$n-$(basename "$f")"
    done < <(find "$src" -type f -size -1024k -print0)
  done
  echo "$n"
}

mkdir -p fuzz/artifacts/logs
declare -a rows
failed=0
for target in "${targets[@]}"; do
  if [ ${#features[@]} -gt 0 ] && [[ "$proxy_targets" == *" $target "* ]]; then
    rows+=("$target|skipped (trellis-proxy does not build)|||||")
    continue
  fi
  corpus="fuzz/corpus/$target"
  seeds="fuzz/corpus/.seeds/$target"
  mkdir -p "$corpus"
  nseeds=$(stage_seeds "$target" "$seeds")
  log="fuzz/artifacts/logs/$target.log"
  echo "scripts/fuzz.sh: $target for ${seconds}s ($nseeds seeds, corpus $corpus, log $log)"
  status=0
  cargo +nightly fuzz run "${flags[@]}" "${features[@]}" "$target" "$corpus" "$seeds" -- \
    -max_total_time="$seconds" -rss_limit_mb="$rss_limit" -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  stat() { grep -m1 "^stat::$1:" "$log" | awk '{print $2}'; }
  execs=$(stat number_of_executed_units)
  rate=$(stat average_exec_per_sec)
  units=$(find "$corpus" -type f | wc -l)
  artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //' || true)
  if [ "$status" -ne 0 ]; then
    failed=1
    kind=$(grep -m1 -o -E 'deadly signal|panicked at|ERROR: libFuzzer: [a-z-]+' "$log" || echo "exit $status")
    rows+=("$target|FOUND: $kind|${execs:-?}|${rate:-?}|$units|1|${artifact:-see $log}")
  else
    rows+=("$target|ok|${execs:-?}|${rate:-?}|$units|0|")
  fi
done

echo
{
  echo "target|result|execs|execs/s|corpus|crashes|artifact"
  printf '%s\n' "${rows[@]}"
} | column -t -s '|'
if [ "$failed" -ne 0 ]; then
  echo
  echo "scripts/fuzz.sh: a target failed; reproduce with: cargo +nightly fuzz run ${flags[*]} <target> <artifact>" >&2
  exit 1
fi
