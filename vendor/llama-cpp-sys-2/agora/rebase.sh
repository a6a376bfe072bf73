#!/usr/bin/env bash
# Rebuilds the vendored llama-cpp-sys-2 from the published crate: unpack the pristine crate
# (version in agora/UPSTREAM, or the one given), remove what agora/pruned.txt lists (GPU
# backends, tools, examples), apply agora/patches/*.patch in order.
#
#   agora/rebase.sh --check            the result must equal the committed vendor tree (CI runs
#                                      this: the patches are exactly what is vendored)
#   agora/rebase.sh --to VERSION       rebase onto another crate version: writes the result over
#                                      the vendor tree (keeping agora/ and AGORA-PATCH.md),
#                                      records VERSION in agora/UPSTREAM, then runs the tile
#                                      check and the bit-exactness test. A patch that no longer
#                                      applies stops it with the rejected hunks shown.
#
# The pristine crate comes from cargo's registry cache, or is fetched through cargo (crates.io).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
vendor="$(dirname "$here")"
root="$(cd "$vendor/../.." && pwd)"
mode="${1:---check}"
version="$(sed -n 's/^crate-version: *//p' "$here/UPSTREAM")"
if [ "$mode" = "--to" ]; then
    version="${2:?usage: rebase.sh --to VERSION}"
elif [ "$mode" != "--check" ]; then
    echo "usage: rebase.sh --check | --to VERSION" >&2
    exit 2
fi

work="$(mktemp -d -t agora-rebase-XXXXXX)"
trap 'rm -rf "$work"' EXIT

crate_file() {
    ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"llama-cpp-sys-2-$version.crate" 2>/dev/null | head -n 1
}
if [ -z "$(crate_file)" ]; then
    echo "fetching llama-cpp-sys-2 $version from crates.io…" >&2
    mkdir -p "$work/fetch/src"
    printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nllama-cpp-sys-2 = "=%s"\n' "$version" >"$work/fetch/Cargo.toml"
    : >"$work/fetch/src/lib.rs"
    (cd "$work/fetch" && cargo fetch -q)
fi
crate="$(crate_file)"
[ -n "$crate" ] || { echo "error: llama-cpp-sys-2 $version is not in cargo's registry cache and could not be fetched" >&2; exit 1; }

mkdir -p "$work/new"
tar -xzf "$crate" -C "$work/new"
new="$work/new/llama-cpp-sys-2-$version"
while IFS= read -r p; do
    [ -n "$p" ] && rm -rf "${new:?}/$p"
done <"$here/pruned.txt"
for patch in "$here"/patches/*.patch; do
    if ! patch -d "$new" -p1 --no-backup-if-mismatch -s <"$patch"; then
        echo "error: $(basename "$patch") does not apply to llama-cpp-sys-2 $version (see the .rej files above)" >&2
        exit 1
    fi
done

if [ "$mode" = "--check" ]; then
    if diff -r -q -x agora -x AGORA-PATCH.md "$new" "$vendor"; then
        echo "vendor/llama-cpp-sys-2 = llama-cpp-sys-2 $version (pristine) - pruned.txt + $(ls "$here"/patches/*.patch | wc -l) patches: identical"
    else
        echo "error: the vendored tree is not the pristine crate plus agora/patches (regenerate the patches, or run rebase.sh --to $version)" >&2
        exit 1
    fi
    exit 0
fi

# --to: replace the tree, keep Agora's own files.
find "$vendor" -mindepth 1 -maxdepth 1 ! -name agora ! -name AGORA-PATCH.md -exec rm -rf {} +
cp -a "$new"/. "$vendor"/
sed -i "s/^crate-version: .*/crate-version: $version/" "$here/UPSTREAM"
commit="$(tar -xzOf "$crate" "llama-cpp-sys-2-$version/.cargo_vcs_info.json" 2>/dev/null | sed -n 's/.*"sha1": *"\([0-9a-f]*\)".*/\1/p')"
[ -n "$commit" ] && sed -i "s/^llama-cpp-rs-commit: .*/llama-cpp-rs-commit: $commit/" "$here/UPSTREAM"
echo "rebased onto llama-cpp-sys-2 $version; checking the kernels and bit-exactness…" >&2
"$here/tile-check.sh"
(cd "$root" && cargo test --release -p agora-cli --test bitexact -- --test-threads=1)
