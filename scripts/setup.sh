#!/usr/bin/env bash
# Installs what building and testing Agora needs on Debian/Ubuntu, or says exactly what is missing.
# Sourced by scripts/run-node.sh and scripts/test.sh; safe to run again (it only installs what is absent).
set -euo pipefail

# Shared with CI: repeated runs on this machine are incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/agora-target}"

agora_missing_debs() {
    local want=("$@") missing=()
    for p in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    echo "${missing[@]:-}"
}

agora_install_debs() {
    local missing
    missing=$(agora_missing_debs "$@")
    [ -z "$missing" ] && return 0
    if ! command -v apt-get >/dev/null; then
        echo "error: these packages are needed and this is not a Debian-like system: $missing" >&2
        echo "       install their equivalents (cmake, clang, libclang) and run again" >&2
        return 1
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; else
            echo "error: missing Debian packages: $missing" >&2
            echo "       run: sudo apt-get install -y $missing" >&2
            return 1
        fi
    fi
    echo "installing Debian packages: $missing" >&2
    $sudo apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >&2
}

agora_check_rust() {
    if ! command -v cargo >/dev/null; then
        echo "error: the Rust toolchain is missing: install it from https://rustup.rs and run again" >&2
        return 1
    fi
}

agora_check_python() {
    if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
        echo "error: python3 with pip is needed to fetch the default model (Debian: apt-get install python3-pip python3-venv)" >&2
        return 1
    fi
}

# Build dependencies: cmake and clang/libclang for llama.cpp and its bindings.
agora_build_deps() {
    agora_check_rust
    agora_install_debs cmake clang libclang-dev patch
    agora_check_python
}

# Test dependencies beyond the build: Go's sumdb note/tlog packages (an independent C2SP
# implementation the interop test checks against), python3-venv for the OpenAI client, and
# Chromium with its WebDriver for the dashboard's browser test.
agora_test_deps() {
    agora_install_debs golang-go golang-golang-x-mod-dev python3-venv chromium chromium-driver
}
