#!/usr/bin/env python3
"""Summarises a `cargo build --timings` report: wall time, the sum of the units' times, and the
slowest units with when they ran (seconds from the start of the build).

Usage: bench/build_timings.py target/cargo-timings/cargo-timing-*.html [--top N]
A measurement tool, never an assertion; bench/build.md cites its output.
"""
import json
import re
import sys


def load(path):
    html = open(path, encoding="utf-8").read()
    m = re.search(r"const UNIT_DATA = (\[.*?\]);\n", html, re.S)
    if not m:
        sys.exit(f"{path}: no UNIT_DATA in this report (not a cargo --timings HTML file?)")
    return json.loads(m.group(1))


def main():
    args = sys.argv[1:]
    top = 15
    if "--top" in args:
        k = args.index("--top")
        top = int(args[k + 1])
        del args[k : k + 2]
    if len(args) != 1:
        sys.exit(__doc__)
    units = load(args[0])
    wall = max(u["start"] + u["duration"] for u in units)
    cpu = sum(u["duration"] for u in units)
    print(f"units: {len(units)}, wall: {wall / 60:.1f} min, sum of unit times: {cpu / 60:.1f} min")
    print(f"\nslowest {top} units:")
    for u in sorted(units, key=lambda u: -u["duration"])[:top]:
        kind = u.get("target", "").strip() or "lib"
        end = u["start"] + u["duration"]
        print(f"  {u['duration']:7.1f} s  ({u['start']:6.1f} → {end:6.1f})  {u['name']} {u['version']} {kind}")


if __name__ == "__main__":
    main()
