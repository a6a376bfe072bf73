#!/usr/bin/env bash
# Tests of issue 3: identity and statements, transparency logs, witness, CLI, crash, interop, fuzz.
# Needs: the Merkle vectors at ../shared/testdata/merkle (or AGORA_MERKLE_VECTORS), the Debian
# packages golang-go and golang-golang-x-mod-dev (Go interop), the nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`). FUZZ_SECONDS sets the fuzzing time per target.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -p agora-tlog -p agora-core -p agora-log
cargo test --release -p agora-api --lib tlog::
cargo test --release -p agora-cli --test tlog_cli --test tlog_witness --test tlog_crash --test tlog_interop
scripts/fuzz-short.sh
