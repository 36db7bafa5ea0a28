"""Runs benchmark modules against several targets in one run and prints ratios.

Every target is started first and stays up; then each measure runs on each
target in turn, round after round (``--rounds``), so that all of them see the
same machine load, and the median over rounds is reported.  The clients run
in this process, under one asyncio loop; the gateways are other processes.

A benchmark module has ``ROWS`` (key, label, unit, kind), optionally
``add_args(parser)``, and ``async def measure(target, args, put)`` that calls
``put(key, value, **details)``.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import _client
import _gateway
import _proc
import _tls
from _gateway import log

#: The targets of the issue: (what, row key, test, bound).  "dir<=" / "dir>=" compare the
#: ratio to direct with the bound; "<=" / ">=" compare the value itself (in the row's unit).
TARGETS = [
    ("execute round trip, legacy JSON", "rt_json_p50", "dir<=", 1.1),
    ("execute round trip, v1", "rt_v1_p50", "dir<=", 1.1),
    ("gateway CPU per execute (us), JSON", "cpu_exec_json", "<=", 400),
    ("gateway CPU per execute (us), v1", "cpu_exec_v1", "<=", 400),
    ("gateway CPU per small iopub msg (us), JSON", "cpu_small_json", "<=", 50),
    ("gateway CPU per small iopub msg (us), v1", "cpu_small_v1", "<=", 50),
    ("2 MB outputs, JSON", "large_json", "dir>=", 1.0),
    ("2 MB outputs, v1", "large_v1", "dir>=", 1.0),
    ("one print to 100 clients, last (ms), JSON", "fanout_json", "<=", 100),
    ("one print to 100 clients, last (ms), v1", "fanout_v1", "<=", 100),
    ("parallel executes, 8 kernels, v1", "par_v1", "dir>=", 0.95),
    ("1,000 idle WebSockets: gateway RSS (MB)", "idle_rss", "<=", 50),
    ("stalled client: RSS growth (MB)", "slow_rss", "<=", 64),
    ("stalled client: other client's speed", "slow_speed", ">=", 0.8),
]


def parse_args(modules, argv=None):
    p = argparse.ArgumentParser(description=(modules[0].__doc__ or "").strip().splitlines()[0]
                                if len(modules) == 1 else "All jkg benchmarks, one table.")
    p.add_argument("--targets", default="direct,kg,jkg",
                   help="comma list of direct, kg, jkg (default: all three)")
    p.add_argument("--jkg", action="append", default=[], metavar="NAME=TREE[;ENV=VALUE...]",
                   help="another jkg to compare, started from source tree TREE (e.g. a git worktree "
                        "of another commit), with optional environment settings; repeatable")
    p.add_argument("--rounds", type=int, default=1, help="rounds over all targets; medians reported")
    p.add_argument("--json-out", default=None, help="also write the results here")
    p.add_argument("--tls", action="store_true",
                   help="gateways serve https/wss with a throwaway CA's certificate (direct stays ZeroMQ)")
    p.add_argument("--ws-client", choices=("websockets", "aiohttp"), default="websockets",
                   help="the WebSocket library of the gateways' clients (default websockets)")
    p.add_argument("--verbose", "-v", action="store_true")
    for module in modules:
        if hasattr(module, "add_args"):
            module.add_args(p)
    args = p.parse_args(argv)
    args.target_names = [t.strip() for t in args.targets.split(",") if t.strip()]
    _client.LIBRARY = args.ws_client
    return args


def make_targets(args, logdir: Path) -> list:
    targets = []
    tls = _tls.Certificates(logdir / "tls") if args.tls else None
    for name in args.target_names:
        if name == "direct":
            targets.append(_gateway.Direct(logdir))
        elif name == "kg":
            targets.append(_gateway.kg(logdir, tls=tls))
        elif name == "jkg":
            targets.append(_gateway.jkg("jkg", _gateway.REPO, logdir, tls=tls))
        else:
            raise SystemExit(f"unknown target {name!r}")
    for spec in args.jkg:
        name, _, rest = spec.partition("=")
        tree, *settings = rest.split(";")
        env = dict(s.split("=", 1) for s in settings if s)
        targets.append(_gateway.jkg(name, Path(tree), logdir, env=env, tls=tls))
    return targets


class Results:
    def __init__(self):
        self.values: dict[str, dict[str, list]] = {}
        self.details: dict[str, dict[str, list]] = {}
        self.errors: list[str] = []

    def putter(self, target_name: str):
        def put(key, value, **details):
            self.values.setdefault(key, {}).setdefault(target_name, []).append(value)
            if details:
                self.details.setdefault(key, {}).setdefault(target_name, []).append(details)
        return put

    def value(self, key, target_name):
        vals = [v for v in self.values.get(key, {}).get(target_name, []) if v is not None]
        return statistics.median(vals) if vals else None


def _fmt(v, unit=""):
    if v is None:
        return "-"
    if unit in ("msg/s", "exec/s"):
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"


def _ratio(a, b):
    return None if a is None or not b else a / b


def report(modules, names, results: Results, args) -> dict:
    rows = [row for module in modules for row in module.ROWS]
    gateways = [n for n in names if n not in ("direct", "kg")]
    cols = names + [f"{g}/dir" for g in gateways if "direct" in names] + \
        [f"{g}/kg" for g in gateways if "kg" in names]
    width = max(10, *(len(c) + 1 for c in cols))
    print()
    print(f"{'measure':<44}{'unit':>7}" + "".join(f"{c:>{width}}" for c in cols))
    for key, label, unit, _kind in rows:
        if key not in results.values:
            continue
        vals = [results.value(key, n) for n in names]
        line = f"{label:<44}{unit:>7}" + "".join(f"{_fmt(v, unit):>{width}}" for v in vals)
        for g in gateways:
            if "direct" in names:
                line += f"{_fmt(_ratio(results.value(key, g), results.value(key, 'direct'))):>{width}}"
        for g in gateways:
            if "kg" in names:
                line += f"{_fmt(_ratio(results.value(key, g), results.value(key, 'kg'))):>{width}}"
        print(line)
    print("\n(time/cost rows: lower is better; speed rows: higher is better; cost = CPU of the gateway "
          "process from /proc/PID/stat over the measured window)")
    verdicts = {}
    for g in gateways:
        print(f"\ntargets for {g}:")
        print(f"{'target':<46}{'value':>9}{'÷direct':>9}{'÷kg':>8}{'bound':>12}{'met?':>6}")
        for what, key, test, bound in TARGETS:
            v = results.value(key, g)
            if v is None:
                continue
            d, k = _ratio(v, results.value(key, "direct")), _ratio(v, results.value(key, "kg"))
            tested = d if test.startswith("dir") else v
            ok = None if tested is None else (tested <= bound if test.endswith("<=") else tested >= bound)
            verdicts.setdefault(g, {})[key] = ok
            shown = ("÷dir " if test.startswith("dir") else "") + test[-2:] + f" {bound:g}"
            print(f"{what:<46}{_fmt(v):>9}{_fmt(d):>9}{_fmt(k):>8}{shown:>12}"
                  f"{'-' if ok is None else ('yes' if ok else 'NO'):>6}")
    _report_floor(gateways, results)
    if results.errors:
        print("\nerrors:")
        for e in results.errors:
            print("  " + e)
    return verdicts


#: Wake-ups per measured unit: one per small message on a quiet gateway; four per ``pass`` execute
#: (the request, then three kernel reads: busy + execute_input, execute_reply, idle).
_WAKE_UPS = [("cpu_small_json", 1), ("cpu_small_v1", 1), ("cpu_exec_json", 4), ("cpu_exec_v1", 4)]


def _report_floor(gateways, results: Results) -> None:
    """Each gateway's CPU rows against the bare forwarder's CPU per wake-up measured in the same run."""
    floors = [(name, results.value(f"floor_{name}", "direct")) for name in ("asyncio", "uvloop")]
    floors = [(name, f) for name, f in floors if f]
    rows = [(key, wakes) for key, wakes in _WAKE_UPS if key in results.values]
    if not floors or not rows:
        return
    print("\nagainst the machine's floor (bench_floor: a bare forwarder, one recv + send per wake-up), "
          "value ÷ (wake-ups × floor):")
    print(f"{'gateway':<12}{'row':<18}{'wake-ups':>9}" + "".join(f"{'÷' + name:>10}" for name, _ in floors))
    for g in gateways:
        for key, wakes in rows:
            v = results.value(key, g)
            if v is not None:
                print(f"{g:<12}{key:<18}{wakes:>9}" + "".join(f"{_fmt(v / (wakes * f)):>10}" for _, f in floors))


async def _run_one(module, target, args, put):
    await module.measure(target, args, put)


def main(modules, argv=None) -> int:
    args = parse_args(modules, argv)
    logdir = Path(tempfile.mkdtemp(prefix="jkg-bench-"))
    log(f"logs in {logdir}; load average at start {_proc.loadavg()}")
    started = datetime.datetime.now(datetime.UTC).isoformat()
    results = Results()
    loads = [_proc.loadavg()]
    targets = []
    try:
        for target in make_targets(args, logdir):
            try:
                target.start()
                targets.append(target)
            except _gateway.Unavailable as e:
                print(f"SKIP {target.name}: {e}", flush=True)
        for rnd in range(args.rounds):
            for module in modules:
                for target in targets:
                    if not target.alive():
                        results.errors.append(f"{target.name}: process is gone")
                        continue
                    t0 = time.monotonic()
                    try:
                        asyncio.run(_run_one(module, target, args, results.putter(target.name)))
                    except Exception as e:  # noqa: BLE001 - one failure must not stop the run
                        results.errors.append(f"{module.__name__} on {target.name}: {e!r}")
                        if args.verbose:
                            traceback.print_exc()
                    log(f"[{target.name}] {module.__name__} round {rnd + 1}: {time.monotonic() - t0:.1f} s, "
                        f"load {_proc.loadavg()}")
            loads.append(_proc.loadavg())
    except KeyboardInterrupt:
        log("interrupted; partial results follow")
    finally:
        for target in targets:
            target.stop()
    names = [t.name for t in targets]
    verdicts = report(modules, names, results, args)
    print(f"\nload average (1/5/15 min) at start and after each round: {' | '.join(loads)}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {"started": started, "loadavg": loads, "targets": names, "values": results.values,
             "details": results.details, "errors": results.errors, "verdicts": verdicts,
             "args": {k: v for k, v in vars(args).items()}}, indent=1, default=str))
    return 1 if results.errors else 0


def run_module(module_name: str) -> None:
    sys.exit(main([sys.modules[module_name]]))
