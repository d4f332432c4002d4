# Sourced by the benchmarks (not run): sets OHA to the load generator, oha, installing it with
# cargo into ~/.local/oha when it is neither on PATH nor there already.

OHA="${OHA:-$(command -v oha || true)}"
if [ -z "$OHA" ] && [ -x "${HOME}/.local/oha/bin/oha" ]; then OHA="${HOME}/.local/oha/bin/oha"; fi
if [ -z "$OHA" ]; then
  echo "installing oha (the load generator) with cargo..." >&2
  cargo install --locked --quiet oha --root "${HOME}/.local/oha"
  OHA="${HOME}/.local/oha/bin/oha"
fi
