#!/usr/bin/env bash
# Rebuilds the vendored llama-cpp-2 from the published crate, the same way as
# vendor/llama-cpp-sys-2/agora/rebase.sh: unpack the pristine crate (version in agora/UPSTREAM,
# or the one given), remove what agora/pruned.txt lists, apply agora/patches/*.patch in order.
#
#   agora/rebase.sh --check            the result must equal the committed vendor tree, and the
#                                      workspace must pin that version (CI runs this: the
#                                      patches are exactly what is vendored, and used)
#   agora/rebase.sh --to VERSION       rebase onto another crate version: writes the result over
#                                      the vendor tree (keeping agora/ and AGORA-PATCH.md),
#                                      records VERSION in agora/UPSTREAM and in the workspace's
#                                      pin (Cargo.toml), then builds agora-cli and runs the
#                                      bit-exactness test. A patch that no longer applies stops
#                                      it with the rejected hunks shown.
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

# The workspace dependency: `llama-cpp-2 = { version = "=X", ... }` in the root Cargo.toml. The
# [patch.crates-io] entry is used only while X is the vendored version.
pin_re='^(llama-cpp-2 = \{ version = "=)([^"]+)(".*)$'
pinned="$(sed -n -E "s/$pin_re/\2/p" "$root/Cargo.toml")"
[ -n "$pinned" ] || { echo "error: no 'llama-cpp-2 = { version = \"=…\"' line in $root/Cargo.toml" >&2; exit 1; }

work="$(mktemp -d -t agora-rebase-XXXXXX)"
trap 'rm -rf "$work"' EXIT

crate_file() {
    ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"llama-cpp-2-$version.crate" 2>/dev/null | head -n 1 || true
}
if [ -z "$(crate_file)" ]; then
    echo "fetching llama-cpp-2 $version from crates.io…" >&2
    mkdir -p "$work/fetch/src"
    # The vendored llama-cpp-sys-2 stands in for the published one, so that only the small crate
    # is downloaded when it accepts that version.
    printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nllama-cpp-2 = { version = "=%s", default-features = false }\n[patch.crates-io]\nllama-cpp-sys-2 = { path = "%s" }\n' \
        "$version" "$root/vendor/llama-cpp-sys-2" >"$work/fetch/Cargo.toml"
    : >"$work/fetch/src/lib.rs"
    (cd "$work/fetch" && cargo fetch -q) || true
fi
crate="$(crate_file)"
[ -n "$crate" ] || { echo "error: llama-cpp-2 $version is not in cargo's registry cache and could not be fetched (is it published?)" >&2; exit 1; }

mkdir -p "$work/new"
tar -xzf "$crate" -C "$work/new"
new="$work/new/llama-cpp-2-$version"
commit="$(sed -n 's/^ *"sha1": *"\([0-9a-f]*\)".*/\1/p' "$new/.cargo_vcs_info.json" 2>/dev/null || true)"
while IFS= read -r p; do
    [ -n "$p" ] && rm -rf "${new:?}/$p"
done <"$here/pruned.txt"
for patch in "$here"/patches/*.patch; do
    if ! patch -d "$new" -p1 --no-backup-if-mismatch -s <"$patch"; then
        echo "error: $(basename "$patch") does not apply to llama-cpp-2 $version (see the .rej files above)" >&2
        exit 1
    fi
done

if [ "$mode" = "--check" ]; then
    sys="$(sed -n 's/^crate-version: *//p' "$root/vendor/llama-cpp-sys-2/agora/UPSTREAM")"
    if ! diff -r -q -x agora -x AGORA-PATCH.md "$new" "$vendor"; then
        echo "error: the vendored tree is not the pristine crate plus agora/patches (regenerate the patches, or run rebase.sh --to $version)" >&2
        exit 1
    fi
    if [ "$pinned" != "$version" ]; then
        echo "error: Cargo.toml pins llama-cpp-2 =$pinned but vendor/llama-cpp-2 is $version: the patch would not be used (run rebase.sh --to $version)" >&2
        exit 1
    fi
    echo "vendor/llama-cpp-2 = llama-cpp-2 $version (pristine) - pruned.txt + $(ls "$here"/patches/*.patch | wc -l) patches: identical; pinned =$pinned; over llama-cpp-sys-2 $sys"
    exit 0
fi

# --to: replace the tree, keep Agora's own files, move the pin.
find "$vendor" -mindepth 1 -maxdepth 1 ! -name agora ! -name AGORA-PATCH.md -exec rm -rf {} +
cp -a "$new"/. "$vendor"/
sed -i "s/^crate-version: .*/crate-version: $version/" "$here/UPSTREAM"
[ -n "$commit" ] && sed -i "s/^llama-cpp-rs-commit: .*/llama-cpp-rs-commit: $commit/" "$here/UPSTREAM"
sed -i -E "s/$pin_re/\1$version\3/" "$root/Cargo.toml"
echo "rebased onto llama-cpp-2 $version; building and checking bit-exactness…" >&2
(cd "$root" && cargo build --release -p agora-cli)
(cd "$root" && cargo test --release -p agora-cli --test bitexact -- --test-threads=1)
