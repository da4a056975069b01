"""A scenario benchmark with a chosen subset of its learned rows (the same budget each).

    python scripts/bench_methods.py domain 90 hypernetwork,lo-di,lo-hp '{"domains": [0]}' runs/bench20

Runs the registered benchmark NAME with the variants of its --budget hook whose method is
in METHODS, the config fields in the JSON argument, one torch thread (so two runs can share
two cores), and writes OUT/NAME.json and OUT/plots/ (the tables of docs/benchmarks.md came from it).
"""
import json
import sys
import time
from pathlib import Path

import torch

import lohp.bench  # noqa: F401 (registers the benchmarks)
from lohp.bench.runner import benchmark
from lohp.cli.bench import show

name, budget, methods = sys.argv[1], float(sys.argv[2]), sys.argv[3].split(",")
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
out = Path(sys.argv[5] if len(sys.argv) > 5 else "runs/bench20")
tag = extra.pop("tag", name)
torch.set_num_threads(1)
bench = benchmark(name)
variants = [v for v in bench.budget(budget)["variants"] if v.method in methods]
cfg = bench.config(False, {"variants": variants, **extra})
t0 = time.perf_counter()
res = bench.run(cfg, lambda s: print(f"[{time.perf_counter() - t0:7.0f} s] {s}", flush=True))
res["threads"] = 1
out.mkdir(parents=True, exist_ok=True)
show(bench, res, out / f"{tag}.json", out / "plots")
