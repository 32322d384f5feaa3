"""Prints the crates the `vigil` binary links (normal dependencies of vigil-proxy, less
proc-macros, which run at build time only), one ` NAME VERSION: LICENSE` line each,
for the Comment of debian/copyright. Reads `cargo metadata` on stdin."""

import json
import sys

meta = json.load(sys.stdin)
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
members = set(meta["workspace_members"])
root = next(p["id"] for p in meta["packages"] if p["name"] == "vigil-proxy")


def linked(pkg):
    kinds = {k for t in pkg["targets"] for k in t["kind"]}
    return "proc-macro" not in kinds


seen, todo = set(), [root]
while todo:
    node = todo.pop()
    if node in seen:
        continue
    seen.add(node)
    for dep in nodes[node]["deps"]:
        if any(k["kind"] is None for k in dep["dep_kinds"]) and linked(packages[dep["pkg"]]):
            todo.append(dep["pkg"])

for pid in sorted(seen - members, key=lambda i: (packages[i]["name"], packages[i]["version"])):
    p = packages[pid]
    print(f" {p['name']} {p['version']}: {p['license'] or 'see its source'}")
