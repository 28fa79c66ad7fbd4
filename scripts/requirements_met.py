#!/usr/bin/env python3
"""Exit 0 when every `name==version` line of a requirements file is installed."""
import importlib.metadata as metadata
import sys

for line in open(sys.argv[1], encoding="utf-8"):
    requirement = line.split("#")[0].strip()
    if not requirement:
        continue
    name, _, version = requirement.partition("==")
    name = name.split("[")[0]  # `moto[server]`: the extras install with it
    try:
        if metadata.version(name) != version:
            sys.exit(1)
    except metadata.PackageNotFoundError:
        sys.exit(1)
