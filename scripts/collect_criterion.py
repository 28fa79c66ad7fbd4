#!/usr/bin/env python3
"""Append the latest criterion estimates as JSON lines (one per benchmark).

Usage: collect_criterion.py CRITERION_DIR RESULTS_FILE

Each line: benchmark id, mean and its 95% interval in ns, the throughput criterion was
told (elements or bytes per iteration) turned into a rate per second, git revision,
time and host CPU, so runs can be compared with `jq` or a spreadsheet.
"""
import json
import os
import platform
import subprocess
import sys
import time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    root, results = sys.argv[1], sys.argv[2]
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = []
    for directory, _, files in os.walk(root):
        if not directory.endswith(os.sep + "new") or "estimates.json" not in files:
            continue
        with open(os.path.join(directory, "benchmark.json"), encoding="utf-8") as f:
            bench = json.load(f)
        with open(os.path.join(directory, "estimates.json"), encoding="utf-8") as f:
            estimates = json.load(f)
        mean = estimates["mean"]
        line = {
            "bench": bench["full_id"],
            "mean_ns": mean["point_estimate"],
            "ci95_ns": [mean["confidence_interval"]["lower_bound"], mean["confidence_interval"]["upper_bound"]],
            "git_rev": rev,
            "unix_time": int(time.time()),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
        }
        throughput = bench.get("throughput") or {}
        for kind, amount in throughput.items():
            line[f"{kind.lower()}_per_s"] = amount / (mean["point_estimate"] / 1e9)
        lines.append(line)
    os.makedirs(os.path.dirname(results), exist_ok=True)
    with open(results, "a", encoding="utf-8") as f:
        for line in sorted(lines, key=lambda l: l["bench"]):
            f.write(json.dumps(line) + "\n")
            rate = {k: f"{v:,.0f}" for k, v in line.items() if k.endswith("_per_s")}
            print(f"{line['bench']}: mean {line['mean_ns'] / 1e6:.3f} ms {rate}")


if __name__ == "__main__":
    main()
