#!/usr/bin/env bash
# Checks the Agora patch's tile kernels (Q4_1; Q4_K and Q6_K) bit for bit against upstream's single products, for
# the AVX2 variant (4 x 4; run on any x86-64 with AVX2) and, where the CPU has AVX-512 VNNI, the
# AVX-512 variant (4 x 8). x86-64 only; prints what it checked.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/../llama.cpp/ggml/src"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
[ "$(uname -m)" = x86_64 ] || { echo "tile-check: not x86-64, nothing to check"; exit 0; }
check() { # NAME COLS FLAGS...
    local name=$1 cols=$2; shift 2
    cc -O3 -std=gnu11 "$@" -D_GNU_SOURCE -I"$src" -I"$src/../include" -I"$src/ggml-cpu" \
        -c "$src/ggml-cpu/arch/x86/quants.c" -o "$out/q-$name.o"
    cc -no-pie "$@" "$here/tile-check.c" "$out/q-$name.o" -o "$out/check-$name" \
        -Wl,--unresolved-symbols=ignore-all -lm 2>"$out/ld.log" || { cat "$out/ld.log" >&2; exit 1; }
    printf 'tile-check %s: ' "$name"
    "$out/check-$name" "$cols"
}
grep -qw avx2 /proc/cpuinfo && check avx2 4 -mavx2 -mfma -mf16c
grep -qw avx512_vnni /proc/cpuinfo && check avx512 8 -march=native
exit 0
