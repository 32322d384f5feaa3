#!/usr/bin/env python3
"""Fails if a source file is over 500 lines or a function over 100 (issue #27).

Counts every line of a file; a function from its `fn` line to its closing brace
(doc comments and attributes apart). Test modules (`#[cfg(test)] mod`) count toward
their file, not as functions. Usage: unit_sizes.py SRC_DIR...
"""
import re
import sys
from pathlib import Path

FILE_MAX = 500
FN_MAX = 100
FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+([a-z_][a-z0-9_]*)")


def functions(lines):
    """(name, first line, length) of each function, nested ones included."""
    out = []
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        depth, opened = 0, False
        for j in range(i, len(lines)):
            code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j].split("//")[0])
            code = re.sub(r"'(\\.|[^'\\])'", "''", code)
            if not opened and ";" in code and "{" not in code:
                break  # a declaration without a body
            depth += code.count("{") - code.count("}")
            opened |= "{" in code
            if opened and depth <= 0:
                out.append((m.group(6), i + 1, j - i + 1))
                break
    return out


def main():
    bad = []
    for arg in sys.argv[1:]:
        for f in sorted(Path(arg).rglob("*.rs")):
            lines = f.read_text().splitlines()
            if len(lines) > FILE_MAX:
                bad.append(f"{f}: {len(lines)} lines (at most {FILE_MAX})")
            for name, line, n in functions(lines):
                if n > FN_MAX:
                    bad.append(f"{f}:{line}: fn {name} is {n} lines (at most {FN_MAX})")
    for b in bad:
        print(b)
    if bad:
        sys.exit(1)
    print("every file and function within its size in", " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
