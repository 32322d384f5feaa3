#!/usr/bin/env python3
"""Fails if a crate's modules import each other in a circle, at any level.

Modules are found from the files (`src/a.rs`, `src/a/b.rs` is `a::b`). A reference from
a file in module `a::b::c` to `crate::a::d::X` (a `use`, a path, `super::`) is an edge
between the two siblings where the paths part, here `b -> d` inside `a`. Within each
parent, a circle of two or more siblings is reported with the files that make it.
Usage: import_cycles.py CRATE_SRC_DIR...
"""
import re
import sys
from pathlib import Path

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")
GROUP = re.compile(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)*)::\{([^}]*)\}", re.S)


def modules(src: Path):
    mods = {}
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src).with_suffix("").parts
        if rel in (("lib",), ("main",)):
            path = ()
        elif rel[-1] == "mod":
            path = rel[:-1]
        else:
            path = rel
        mods[f] = path
    return mods


def resolve(known, here, head, segs):
    """The module a path names: its longest prefix that is a known module."""
    if head == "crate":
        base = ()
    elif head == "super":
        base = here[:-1]
        while segs and segs[0] == "super":
            base, segs = base[:-1], segs[1:]
    else:
        base = here
    path = base
    for s in segs:
        if path + (s,) in known:
            path = path + (s,)
        else:
            break
    return path


def edges(src: Path):
    mods = modules(src)
    known = set(mods.values())
    out = {}
    for f, here in mods.items():
        code = re.sub(r"//[^\n]*", "", f.read_text())
        refs = []
        for head, tail in PATH.findall(code):
            refs.append((head, [s for s in tail.split("::") if s and s != "{"]))
        for head, prefix, group in GROUP.findall(code):
            base = [s for s in prefix.split("::") if s]
            for item in group.split(","):
                item = item.strip()
                if item:
                    refs.append((head, base + item.split("::")))
        for head, segs in refs:
            there = resolve(known, here, head, segs)
            i = 0
            while i < min(len(here), len(there)) and here[i] == there[i]:
                i += 1
            if i == len(here) or i == len(there):
                continue  # a module and its own ancestor or descendant
            parent, a, b = "::".join(here[:i]) or "crate", here[i], there[i]
            out.setdefault(parent, {}).setdefault(a, {}).setdefault(b, set()).add(str(f))
    return out


def circles(graph):
    """Strongly connected components of two or more nodes (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
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
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def main():
    bad = False
    for arg in sys.argv[1:]:
        src = Path(arg)
        for parent, graph in sorted(edges(src).items()):
            for comp in circles(graph):
                bad = True
                print(f"{src}: import circle in {parent}: {', '.join(comp)}")
                for a in comp:
                    for b, files in sorted(graph.get(a, {}).items()):
                        if b in comp:
                            print(f"  {a} -> {b} ({', '.join(sorted(files))})")
    if bad:
        sys.exit(1)
    print("no import circles in", " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
