#!/usr/bin/env python3
"""MSRV check: every dependency the crate builds for its users (dev-dependencies aside)
declares a rust-version no newer than ours. Only a 1.95 stable and a nightly exist on these
machines, so the code itself is not compiled with the MSRV; clippy's incompatible_msrv lint
(clippy.toml) catches std APIs newer than it. Language features newer than it are not caught."""
import json, subprocess, sys
meta = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked",
     "--filter-platform", "x86_64-unknown-linux-gnu"]))
pkgs = {p["id"]: p for p in meta["packages"]}
root = meta["resolve"]["root"]
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
def ver(s): return tuple(int(x) for x in (s.split(".") + ["0", "0"])[:3])
ours = pkgs[root]["rust_version"]
seen, stack = set(), [root]
while stack:
    i = stack.pop()
    for d in nodes[i]["deps"]:
        kinds = {k["kind"] for k in d["dep_kinds"]}
        if i == root and kinds <= {"dev"}:
            continue  # dev-dependencies build our tests, not users' code
        if d["pkg"] not in seen:
            seen.add(d["pkg"]); stack.append(d["pkg"])
newest = sorted(((ver(pkgs[i]["rust_version"]), pkgs[i]["name"], pkgs[i]["version"], pkgs[i]["rust_version"])
                 for i in seen if pkgs[i].get("rust_version")), reverse=True)
print(f"rust-version = {ours}; {len(seen)} dependencies; the newest they need:")
for v in newest[:5]: print(f"  {v[1]} {v[2]}: rust-version {v[3]}")
bad = [v for v in newest if v[0] > ver(ours)]
if bad:
    sys.exit(f"rust-version {ours} is older than {len(bad)} dependencies need, e.g. {bad[0][1]} {bad[0][2]} ({bad[0][3]})")
