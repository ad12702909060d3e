#!/usr/bin/env python3
"""Fails when the top-level modules of src/ import each other in a circle.

A module is a top-level file or folder of src/ (config, balance, proxy, ...). Every `crate::NAME` in a file's
code (doc comments and comments aside, `use crate::{a, b}` included) is an edge from the file's module to NAME.
Strongly connected components of more than one module are cycles: they are printed, and the exit code is 1.
"""
import pathlib
import re
import sys

src = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "src")
modules = {p.stem for p in src.glob("*.rs")} | {p.name for p in src.iterdir() if p.is_dir()}
modules -= {"lib", "main"}
edges = {m: set() for m in modules}


def code_of(text):
    """The text without comments and string literals (a string may say `crate::` without importing it)."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


for path in src.rglob("*.rs"):
    top = path.relative_to(src).parts[0]
    top = top[:-3] if top.endswith(".rs") else top
    if top not in edges:
        continue
    code = code_of(path.read_text())
    names = set(re.findall(r"\bcrate::(\w+)", code))
    for group in re.findall(r"\bcrate::\{([^}]*)\}", code):
        names |= {n.strip().split("::")[0] for n in group.split(",") if n.strip()}
    edges[top] |= {n for n in names if n in modules and n != top}

index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]


def strongconnect(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(edges[v]):
        if w not in index:
            strongconnect(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        component = []
        while True:
            w = stack.pop()
            on_stack.discard(w)
            component.append(w)
            if w == v:
                break
        if len(component) > 1:
            cycles.append(sorted(component))


sys.setrecursionlimit(10000)
for v in sorted(edges):
    if v not in index:
        strongconnect(v)

if cycles:
    for c in cycles:
        inside = [f"{a} -> {b}" for a in c for b in sorted(edges[a]) if b in c]
        print(f"import cycle among {', '.join(c)}: {'; '.join(inside)}")
    sys.exit(1)
print(f"no import cycles among the {len(modules)} top-level modules of {src}/")
