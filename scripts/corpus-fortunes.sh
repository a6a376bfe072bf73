#!/usr/bin/env bash
# A real, openly licensed text corpus as Dolma JSON Lines: the quotations of Debian's
# `fortunes` and `fortunes-min` packages (fortune-mod 1.99.1; BSD-3-Clause, as Debian
# distributes them: see usr/share/doc/fortunes/copyright in the package). The offensive
# collection is not included. One record per quotation: id `<collection>/<n>`.
#
# usage: scripts/corpus-fortunes.sh [OUT_DIR]   (default /var/tmp/agora-corpus/fortunes)
# Prints the path of the JSON Lines file. Needs apt-get (Debian's archive) and dpkg-deb.
set -euo pipefail
out="${1:-/var/tmp/agora-corpus/fortunes}"
jsonl="$out/fortunes.jsonl"
if [ -s "$jsonl" ]; then
    echo "$jsonl"
    exit 0
fi
for tool in apt-get dpkg-deb python3; do
    command -v "$tool" >/dev/null || { echo "corpus-fortunes: $tool is missing" >&2; exit 1; }
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download fortunes fortunes-min >/dev/null 2>&1) || {
    (apt-get update >/dev/null 2>&1 && cd "$work" && apt-get download fortunes fortunes-min >/dev/null) \
        || { echo "corpus-fortunes: cannot download the fortunes packages from Debian" >&2; exit 1; }
}
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/x"; done
version="$(dpkg-deb -f "$(ls "$work"/fortunes_*.deb)" Version)"
mkdir -p "$out"
python3 - "$work/x/usr/share/games/fortunes" "$version" > "$jsonl.tmp" <<'PY'
import json, os, sys
root, version = sys.argv[1], sys.argv[2]
for name in sorted(os.listdir(root)):
    path = os.path.join(root, name)
    if name.endswith(".dat") or name.endswith(".u8") or os.path.islink(path) or not os.path.isfile(path):
        continue
    with open(path, encoding="utf-8", errors="strict") as f:
        text = f.read()
    for n, quote in enumerate(q.strip("\n") for q in text.split("\n%\n")):
        if not quote.strip():
            continue
        print(json.dumps({
            "id": f"{name}/{n}",
            "text": quote,
            "source": f"debian:fortunes/{name}",
            "added": "2026-12-01",
            "metadata": {"package": f"fortunes {version}", "license": "BSD-3-Clause"},
        }, ensure_ascii=False, sort_keys=True))
PY
cp "$work/x/usr/share/doc/fortunes/copyright" "$out/COPYRIGHT"
mv "$jsonl.tmp" "$jsonl"
echo "$jsonl"
