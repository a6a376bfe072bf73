#!/usr/bin/env bash
# Builds Agora (installing cmake/clang if needed) and starts a node serving the default model
# (smollm2-135m, fetched and verified on first run) at http://127.0.0.1:8080.
# Extra arguments go to `agora node` (see `agora node --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
agora_build_deps
cargo build --release -p agora-cli
exec "$CARGO_TARGET_DIR/release/agora" node "$@"
