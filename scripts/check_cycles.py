#!/usr/bin/env python3
"""Import cycles between sluice's top-level modules (src/<module>.rs or src/<module>/).

Reads every `crate::<module>` path (in `use` lines and in code) and `super::<module>`
from top-level files, builds the graph module -> modules it uses, and prints each cycle
(a strongly connected component of more than one module). Exit 1 if there is one.
Test code (`#[cfg(test)]` modules, `tests.rs` files) counts too: a cycle through a test is
still a cycle to a reader.
"""
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
ROOT_FILES = {"lib.rs", "main.rs"}


def top_module(path: Path) -> str | None:
    rel = path.relative_to(SRC)
    if len(rel.parts) == 1:
        return None if rel.name in ROOT_FILES else rel.stem
    return rel.parts[0]


def is_top_file(path: Path) -> bool:
    rel = path.relative_to(SRC)
    return len(rel.parts) == 1 or (len(rel.parts) == 2 and rel.name == "mod.rs")


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//.*", "", text)


def used_modules(text: str, top_file: bool, modules: set[str]) -> set[str]:
    found = set()
    # `crate::a::b`, `crate::{a, b::c}`
    for m in re.finditer(r"\bcrate\s*::\s*(\{[^}]*\}|\w+)", text):
        body = m.group(1)
        names = re.findall(r"(?:^|[{,])\s*(\w+)", body) if body.startswith("{") else [body]
        found.update(n for n in names if n in modules)
    if top_file:
        for m in re.finditer(r"\bsuper\s*::\s*(\{[^}]*\}|\w+)", text):
            body = m.group(1)
            names = re.findall(r"(?:^|[{,])\s*(\w+)", body) if body.startswith("{") else [body]
            found.update(n for n in names if n in modules)
    return found


def sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    files = sorted(SRC.rglob("*.rs"))
    modules = {m for f in files if (m := top_module(f))}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    edges: dict[tuple[str, str], list[str]] = {}
    for f in files:
        m = top_module(f)
        if m is None:
            continue
        for used in used_modules(strip_comments(f.read_text()), is_top_file(f), modules):
            if used != m:
                graph[m].add(used)
                edges.setdefault((m, used), []).append(str(f.relative_to(SRC.parent)))
    cycles = sccs(graph)
    if "-v" in sys.argv:
        for m in sorted(graph):
            print(f"{m} -> {', '.join(sorted(graph[m])) or '-'}")
    for comp in cycles:
        print(f"import cycle between: {', '.join(comp)}")
        for a in comp:
            for b in comp:
                if (a, b) in edges:
                    print(f"  {a} -> {b}: {', '.join(sorted(set(edges[(a, b)])))}")
    if cycles:
        return 1
    print(f"no import cycles between the {len(modules)} top-level modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
