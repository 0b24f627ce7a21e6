#!/usr/bin/env python3
"""Fails when a crate's modules import each other in a cycle, or its top-level folders do.

Reads every non-test module of each crate given (default: every workspace crate), follows
`use crate::...`, `use super::...` and inline `crate::` / `super::` paths to the module file
they name, and reports each cycle of such edges (a module declaring its children with `mod`
is not an edge). Test modules (`#[cfg(test)] mod x;` and inline `mod tests { ... }`) are
left out: tests may reach anywhere. Folder level: the first path segment below the crate
root (`domain`, `k8s`, ...) must form no cycle either.

Usage: check-module-cycles.py [CRATE_SRC_DIR ...]
"""

import re
import sys
from pathlib import Path

DEFAULT = ["api/src", "agent/src", "controller/src", "remote_write/src", "e2e/src"]
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_path(src: Path, file: Path) -> tuple:
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod" or (len(parts) == 1 and parts[0] in ("lib", "main")):
        parts = parts[:-1]
    if parts and parts[0] == "bin":
        return None
    return tuple(parts)


def strip_tests(text: str) -> tuple:
    """The text without inline test modules, and the names of `#[cfg(test)] mod x;`."""
    test_children = set(re.findall(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+(" + IDENT + r")\s*;", text))
    out = []
    i = 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+" + IDENT + r"\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    body = "".join(out)
    body = re.sub(r"//[^\n]*", "", body)
    return body, test_children


def expand(tree: str) -> list:
    """`a::{b::c, d}` -> ["a::b::c", "a::d"]."""
    tree = re.sub(r"\s+", "", tree)
    depth = 0
    for i, c in enumerate(tree):
        if c == "{":
            if depth == 0:
                prefix, inner = tree[:i], tree[i + 1 : tree.rindex("}")]
                parts, cur, d = [], "", 0
                for ch in inner:
                    if ch == "," and d == 0:
                        parts.append(cur)
                        cur = ""
                        continue
                    d += {"{": 1, "}": -1}.get(ch, 0)
                    cur += ch
                parts.append(cur)
                return [p for part in parts if part for p in expand(prefix + part)]
            depth += 1
    return [tree]


def resolve(path: str, here: tuple, is_dir_module: bool, modules: set):
    segs = path.split("::")
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] in ("super", "self"):
        base = here if is_dir_module or segs[0] == "self" else here[:-1]
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    else:
        return None
    best = base
    for k in range(1, len(segs) + 1):
        cand = base + tuple(s for s in segs[:k])
        if cand in modules:
            best = cand
        else:
            break
    return best


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
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

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def check(src: Path) -> list:
    files, test_modules = {}, set()
    for file in sorted(src.rglob("*.rs")):
        mp = module_path(src, file)
        if mp is None:
            continue
        body, test_children = strip_tests(file.read_text())
        files[mp] = (body, file.name == "mod.rs" or file.name in ("lib.rs", "main.rs"))
        test_modules |= {mp + (c,) for c in test_children}
    files = {mp: v for mp, v in files.items() if not any(mp[: len(t)] == t for t in test_modules)}
    modules = set(files)
    graph = {}
    for mp, (body, is_dir) in files.items():
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", body):
            paths += expand(m.group(1))
        paths += re.findall(r"(?<![A-Za-z0-9_:])((?:crate|super)(?:::" + IDENT + r")+)", body)
        for p in paths:
            target = resolve(p.split(" as ")[0], mp, is_dir, modules)
            if target is None or target == mp:
                continue
            graph.setdefault(mp, set()).add(target)
    problems = []
    for comp in cycles(graph):
        problems.append(f"{src}: module cycle: " + " <-> ".join("::".join(c) or "crate" for c in comp))
    folders = {}
    for a, targets in graph.items():
        for b in targets:
            if a and b and a[0] != b[0]:
                folders.setdefault(a[0], set()).add(b[0])
    for comp in cycles(folders):
        problems.append(f"{src}: folder cycle: " + " <-> ".join(comp))
    return problems


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    dirs = [Path(d) for d in sys.argv[1:]] or [root / d for d in DEFAULT]
    problems = [p for d in dirs for p in check(d)]
    for p in problems:
        print(p)
    if not problems:
        print(f"no module or folder cycle in {len(dirs)} crates")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
