#!/usr/bin/env python3
"""Every gateway benchmark in one run, one table, and the issue's targets met or not.

    python benchmarks/bench_all.py [--rounds 2] [--jkg old=/path/to/worktree] [--only roundtrip,fanout]
"""
from __future__ import annotations

import sys

import _harness
import bench_fanout
import bench_floor
import bench_idle
import bench_large
import bench_parallel
import bench_roundtrip
import bench_small
import bench_stalled

MODULES = {"roundtrip": bench_roundtrip, "small": bench_small, "large": bench_large, "fanout": bench_fanout,
           "parallel": bench_parallel, "idle": bench_idle, "stalled": bench_stalled,
           "floor": bench_floor}

if __name__ == "__main__":
    argv = sys.argv[1:]
    only = list(MODULES)
    if "--only" in argv:
        i = argv.index("--only")
        only = argv[i + 1].split(",")
        del argv[i:i + 2]
    sys.exit(_harness.main([MODULES[name] for name in only], argv))
