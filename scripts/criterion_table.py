#!/usr/bin/env python3
"""Prints the last `cargo bench --bench overhead` run as Markdown tables.

For each group (timeout, bulkhead, circuit_breaker, retry, stack) and mode (ready,
pending_once, contended): the time per call of every entry, the time each adds over the bare
`service_fn` (baseline), and the ratio of each bulwark entry's added time to its tower
counterpart's, from the same run. Ready and pending once are criterion's means; contended is
the bench's own paired measurement (`target/criterion/contended.json`): medians over rounds,
and the median (min to max) of the ratios taken round by round.

    cargo bench --bench overhead -- --warm-up-time 1 --measurement-time 3
    python3 scripts/criterion_table.py
"""

import json
import pathlib
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
GROUPS = ["timeout", "bulkhead", "circuit_breaker", "retry", "stack"]
MODES = ["ready", "pending_once"]
# Which tower entry each bulwark entry is compared with.
PAIRS = {
    "timeout": {"bulwark": "tower"},
    "bulkhead": {"bulwark": "tower_concurrency_limit", "bulwark_max_wait": "tower_concurrency_limit"},
    "circuit_breaker": {"bulwark": "tower_concurrency_limit", "bulwark_windows": "tower_concurrency_limit"},
    "retry": {"bulwark": "tower_budget", "bulwark_no_budget": "tower"},
    "stack": {"bulwark": "tower", "bulwark_as_tower": "tower"},
}


def mean_ns(path):
    estimates = json.loads((path / "new" / "estimates.json").read_text())
    return estimates["mean"]["point_estimate"]


for group in GROUPS:
    for mode in MODES:
        folder = ROOT / f"{group}_{mode}"
        if not folder.is_dir():
            continue
        entries = {p.name: mean_ns(p) for p in folder.iterdir() if (p / "new").is_dir()}
        base = entries.get("baseline")
        if base is None:
            continue
        print(f"\n**{group}, {mode}** (ns per call; added = minus the baseline's {base:.1f})\n")
        print("| entry | ns | added | ratio of added to tower's |")
        print("| --- | ---: | ---: | --- |")
        for name, ns in sorted(entries.items(), key=lambda kv: kv[1]):
            if name == "baseline":
                continue
            added = ns - base
            tower = PAIRS.get(group, {}).get(name)
            ratio = ""
            if tower in entries:
                tower_added = entries[tower] - base
                if tower_added > 0:
                    ratio = f"{added / tower_added:.2f} (vs {tower})"
            print(f"| {name} | {ns:.1f} | {added:.1f} | {ratio} |")


contended = ROOT / "contended.json"
if contended.is_file():
    data = json.loads(contended.read_text())
    for group in GROUPS:
        entries = data.get(group)
        if not entries or "baseline" not in entries:
            continue
        base = entries["baseline"]["ns"]
        print(f"\n**{group}, contended** (ns per call, median of rounds; added = minus the baseline's {base:.1f})\n")
        print("| entry | ns | added | ratio of added to tower's, round by round: median (min to max) |")
        print("| --- | ---: | ---: | --- |")
        for name, e in sorted(entries.items(), key=lambda kv: kv[1]["ns"]):
            if name == "baseline":
                continue
            ratio = ""
            r = e.get("ratio")
            if r:
                tower_added = entries[r["vs"]]["added"]
                if tower_added < 2.0:
                    ratio = f"(vs {r['vs']}, which adds {tower_added:.1f} ns: no ratio)"
                else:
                    ratio = f"{r['median']:.2f} ({r['min']:.2f} to {r['max']:.2f}) (vs {r['vs']})"
            print(f"| {name} | {e['ns']:.1f} | {e['added']:.1f} | {ratio} |")
