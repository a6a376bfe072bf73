#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this). Installs what it needs:
# Debian packages (cmake, clang, libclang-dev, golang-go, golang-golang-x-mod-dev, python3-venv,
# chromium, chromium-driver),
# a Python venv with the `openai` package, the default model, cargo-fuzz, the wasm32 target; then
# runs fmt, clippy, a wasm32 build of the pure crates, every test (unit, property, integration with real processes and the real model, Merkle
# vectors, Go interop, crash tests), the cheating-worker devnet test (built with the `cheat`
# feature) and a short run of every fuzz target (FUZZ_SECONDS, 20).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
agora_build_deps
agora_test_deps

step() { printf '\n==> %s\n' "$*" >&2; }

step "Python test clients (venv at /var/tmp/agora-venv)"
export AGORA_TEST_PYTHON=/var/tmp/agora-venv/bin/python
if ! "$AGORA_TEST_PYTHON" -c "import openai, mlcroissant" 2>/dev/null; then
    python3 -m venv /var/tmp/agora-venv
    /var/tmp/agora-venv/bin/pip install -q openai mlcroissant
fi

step "format"
cargo fmt --all --check

step "code health: no function over 150 lines outside tests, no module import circles"
python3 scripts/code-health.py

step "build"
cargo build --release --workspace --all-targets

step "llama.cpp patch: the vendored trees are the published crates plus agora/patches, exactly"
vendor/llama-cpp-sys-2/agora/rebase.sh --check
vendor/llama-cpp-2/agora/rebase.sh --check

step "llama.cpp patch: the Q4_1 tile kernel, bit for bit against upstream's product"
vendor/llama-cpp-sys-2/agora/tile-check.sh

step "default model"
"$CARGO_TARGET_DIR/release/agora" model pull smollm2-135m

step "clippy"
cargo clippy --release --workspace --all-targets -- -D warnings

step "the pure crates build for the browser (wasm32-unknown-unknown): what a page checks with"
rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
    || rustup target add wasm32-unknown-unknown
# (No target-cpu=native there: .cargo/config.toml's flags are for this x86-64 CPU.)
RUSTFLAGS="" cargo build --release --target wasm32-unknown-unknown \
    -p agora-core -p agora-tlog -p agora-verify -p agora-data -p agora-community -p agora-wasm

step "dashboard: the committed agora.wasm is exactly what its sources build (scripts/build-wasm.sh)"
scripts/build-wasm.sh "$CARGO_TARGET_DIR/agora.wasm.check"
if ! cmp -s "$CARGO_TARGET_DIR/agora.wasm.check" crates/agora-web/assets/agora.wasm; then
    echo "error: crates/agora-web/assets/agora.wasm differs from what its sources build: run scripts/build-wasm.sh and commit it" >&2
    exit 1
fi

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --release --workspace --profile ci
else
    echo "cargo-nextest not found: running cargo test (serially: the model tests must not share the CPU)" >&2
    cargo test --release --workspace -- --test-threads=1
fi

step "cheating workers and model servers (the cheat feature): clippy, the cheat module's unit tests, a devnet whose validators catch a cheater, and a model fetched past a corrupting and a dying peer"
cargo clippy --release --workspace --all-targets --features agora-cli/cheat -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --release -p agora-cli --features cheat --test cheat_devnet --test model_peers --profile ci
else
    cargo test --release -p agora-cli --features cheat --test cheat_devnet --test model_peers
fi
# the cheat module's own unit tests (mode parsing, the weight edits of every block format)
cargo test --release -p agora-node --features cheat --lib cheat::

if [ -x scripts/fuzz-short.sh ]; then
    step "short fuzz runs"
    scripts/fuzz-short.sh
fi

step "all checks passed"
