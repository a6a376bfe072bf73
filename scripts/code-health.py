#!/usr/bin/env python3
"""Two checks anyone can run on the Rust sources (no dependencies beyond Python 3):

1. The longest functions outside tests (`tests/` directories and `#[cfg(test)]` modules are
   skipped), longest first. Fails when one is longer than --max-lines (default 150).
2. Modules that import each other in a circle, within each crate (`use crate::a::…`,
   `crate::a::…` paths and `super::…` inside `a/`). Fails when there is one.

Usage: scripts/code-health.py [--max-lines N] [--top K] [ROOT]
Exit status: 0 both checks pass, 1 a check fails.
"""
import argparse
import os
import re
import sys


def strip(src):
    """The source with comments, string and char literals blanked (lines kept)."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', src[i:i + 10]) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            m = re.match(r'r(#*)"', src[i:])
            end = '"' + m.group(1)
            j = src.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == "'" and re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x[0-9a-fA-F]{2}'", src[i:i + 12]):
            m = re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x[0-9a-fA-F]{2}'", src[i:i + 12])
            out.append(" " * len(m.group(0)))
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(code, open_at):
    depth = 0
    for j in range(open_at, len(code)):
        if code[j] == "{":
            depth += 1
        elif code[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(code) - 1


def test_ranges(code):
    """Character ranges of `#[cfg(test)]` items."""
    ranges = []
    for m in re.finditer(r"#\[cfg\(test\)\]", code):
        k = code.find("{", m.end())
        semi = code.find(";", m.end())
        if k < 0 or (0 <= semi < k):
            continue
        ranges.append((m.start(), matching_brace(code, k)))
    return ranges


FN = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?(?:extern\s+\"[^\"]*\"\s+)?fn\s+(\w+)", re.M)


def functions(path):
    src = open(path, encoding="utf-8").read()
    code = strip(src)
    skip = test_ranges(code)
    for m in FN.finditer(code):
        if any(a <= m.start() <= b for a, b in skip):
            continue
        k = code.find("{", m.end())
        semi = code.find(";", m.end())
        if k < 0 or (0 <= semi < k):
            continue  # a declaration without a body
        end = matching_brace(code, k)
        first = code.count("\n", 0, m.start()) + 1
        last = code.count("\n", 0, end) + 1
        yield (last - first + 1, path, first, m.group(1))


def rust_files(root):
    for crate in sorted(os.listdir(os.path.join(root, "crates"))):
        src = os.path.join(root, "crates", crate, "src")
        for d, _, files in os.walk(src):
            for f in files:
                if f.endswith(".rs"):
                    yield crate, src, os.path.join(d, f)


def module_of(src_dir, path):
    rel = os.path.relpath(path, src_dir)[:-3].split(os.sep)
    if rel[-1] in ("lib", "main", "mod"):
        rel = rel[:-1]
    return "::".join(rel) or "crate"


def cycles(root):
    graph = {}
    for crate, src_dir, path in rust_files(root):
        mod = module_of(src_dir, path)
        code = strip(open(path, encoding="utf-8").read())
        skip = test_ranges(code)
        code = "".join(ch for i, ch in enumerate(code) if not any(a <= i <= b for a, b in skip)) if skip else code
        targets = set()
        for m in re.finditer(r"\bcrate::(\w+)", code):
            targets.add(m.group(1))
        for m in re.finditer(r"\bcrate::\{([^}]*)\}", code):
            for part in m.group(1).split(","):
                name = part.strip().split("::")[0]
                if name:
                    targets.add(name)
        top = mod.split("::")[0]
        if "::" in mod:
            for m in re.finditer(r"\bsuper::(\w+)", code):
                parent = mod.split("::")[:-1]
                targets.add(parent[0] if parent else m.group(1))
        node = (crate, top)
        for t in targets:
            if t != top and os.path.exists(os.path.join(src_dir, t + ".rs")) or os.path.isdir(os.path.join(src_dir, t)):
                if t != top:
                    graph.setdefault(node, set()).add((crate, t))
        graph.setdefault(node, set())
    # Tarjan's strongly connected components.
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default=os.path.join(os.path.dirname(__file__), ".."))
    ap.add_argument("--max-lines", type=int, default=150)
    ap.add_argument("--top", type=int, default=10)
    a = ap.parse_args()
    root = os.path.abspath(a.root)
    fns = sorted((f for _, _, p in rust_files(root) for f in functions(p)), reverse=True)
    print(f"longest functions outside tests (limit {a.max_lines} lines):")
    for n, path, line, name in fns[: a.top]:
        flag = "  TOO LONG" if n > a.max_lines else ""
        print(f"  {n:5d}  {os.path.relpath(path, root)}:{line}  {name}{flag}")
    too_long = [f for f in fns if f[0] > a.max_lines]
    cyc = cycles(root)
    print("modules importing each other in a circle:" + ("" if cyc else " none"))
    for c in cyc:
        print("  " + c[0][0] + ": " + " <-> ".join(m for _, m in c))
    ok = not too_long and not cyc
    print(f"{len(too_long)} function(s) over {a.max_lines} lines, {len(cyc)} circle(s): {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
