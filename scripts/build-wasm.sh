#!/usr/bin/env bash
# Builds the dashboard's checks (crates/agora-wasm) for the browser and writes them to
# crates/agora-web/assets/agora.wasm, or to $1 when given (the test command builds into a
# temporary file and compares it with the committed one byte for byte).
#
# Reproducible: the wasm profile (Cargo.toml), no CPU flags, and paths remapped so that neither
# the clone's location nor $CARGO_HOME ends up in the module.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-crates/agora-web/assets/agora.wasm}"
rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
    || rustup target add wasm32-unknown-unknown >&2
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
target="${AGORA_WASM_TARGET_DIR:-/var/tmp/agora-wasm-target}"
RUSTFLAGS="--remap-path-prefix=$PWD=/agora --remap-path-prefix=$cargo_home=/cargo" \
    CARGO_TARGET_DIR="$target" \
    cargo build --profile wasm --target wasm32-unknown-unknown -p agora-wasm >&2
install -m 644 "$target/wasm32-unknown-unknown/wasm/agora_wasm.wasm" "$out"
echo "$out: $(wc -c < "$out") bytes, $(gzip -9 -c "$out" | wc -c) gzipped" >&2
