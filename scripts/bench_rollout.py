"""Generation speed per backend: ms per policy step beside the policy's FLOPs per step.

    python scripts/bench_rollout.py runs/speed/rollout digits=POLICY_DIR transfer=POLICY_DIR ...

For each policy and each generation backend (eager, trace, inductor): the first call's
time (building the trace or the compile; inductor's is cached on disk, so a second process
is faster), then the median latency over 30 calls (policy steps only, and with the
condition), on one torch thread; and the time-to-accuracy ratio of the issue's tables:
on each of 10 held-out tasks, the wall time of full-batch Adam (its learning rate tuned on
source tasks, at most 10 T steps) to first reach the generated weights' accuracy, divided
by the latency with the condition (the median over tasks). Writes OUT.json and OUT.png and
prints a table.
"""
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from lohp.bench.scenario import speedup, tune_adam
from lohp.generation import Generator
from lohp.optim import DEFAULTS

torch.set_num_threads(1)
out = Path(sys.argv[1])
rows = []
for spec in sys.argv[2:]:
    name, _, folder = spec.partition("=")
    base = Generator.load(folder, backend="eager")
    task = base.family().heldout_tasks(3)[0]
    policy = base.policy
    s0 = base.initial_state(task)[None]
    cond = task.condition(policy.condition_points)[None]
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        policy(s0, torch.zeros(1, dtype=torch.long), cond)
    flops = fc.get_total_flops()
    meta = base.meta
    T = int(meta["total_steps"])
    adam_hp, _ = tune_adam(base.family(), {**DEFAULTS["adam"], **meta["store_hparams"]["adam"]}, meta["init"], meta["init_sigma"], T,
                           int(meta["store_batch_size"]))
    tasks = base.family().heldout_tasks(10)
    s0_all = torch.stack([base.initial_state(t) for t in tasks])
    metric = tasks[0].metric_name
    accs = [t.evaluate(base.generate(t).theta)[metric] for t in tasks]
    for backend in ("eager", "trace", "inductor"):
        gen = Generator(policy, base.meta, backend=backend)
        t0 = time.perf_counter()
        gen.generate(task)
        first = time.perf_counter() - t0
        lat = gen.latency(task)
        row = {"scenario": name, "backend": backend, "steps": gen.n_steps, "d": task.layout.size,
               "policy_parameters": sum(p.numel() for p in policy.parameters()),
               "mflop_per_step": flops / 1e6, "first_call_s": first,
               "latency_ms": lat["latency_ms"], "latency_with_condition_ms": lat["latency_with_condition_ms"],
               "ms_per_step": lat["latency_ms"] / gen.n_steps,
               "gflop_per_s": flops * gen.n_steps / (lat["latency_ms"] / 1e3) / 1e9,
               "fell_back": list(gen._traced.values())[:1] == [None], "accuracy": sum(accs) / len(accs),
               "adam_lr": adam_hp["lr"]}
        row.update(speedup(tasks, s0_all, accs, adam_hp, lat["latency_ms"], T, len(tasks),
                           lat["latency_with_condition_ms"]))
        rows.append(row)
        print(f"{name:10s} {backend:9s} N {row['steps']:2d} d {row['d']:6d} {row['mflop_per_step']:6.2f} MFLOP/step "
              f"first {first:7.2f} s  {row['latency_ms']:7.2f} ms ({row['ms_per_step']:.3f} ms/step, "
              f"{row['gflop_per_s']:.1f} GFLOP/s)  with condition {row['latency_with_condition_ms']:7.2f} ms; "
              f"acc {row['accuracy']:.4f}, Adam's time to it / latency with condition "
              f"{row['time_to_accuracy_speedup']:.2f} x ({row['speedup_adam_reached']}/{len(tasks)} reached)",
              flush=True)
meta = {"command": " ".join(["python"] + sys.argv), "threads": 1, "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "cpus": torch.get_num_interop_threads()}
out.parent.mkdir(parents=True, exist_ok=True)
out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
names = list(dict.fromkeys(r["scenario"] for r in rows))
fig, ax = plt.subplots(figsize=(7, 3.5))
for i, backend in enumerate(("eager", "trace", "inductor")):
    vals = [next(r["latency_ms"] for r in rows if r["scenario"] == n and r["backend"] == backend) for n in names]
    ax.bar([k + 0.27 * (i - 1) for k in range(len(names))], vals, 0.27, label=backend)
ax.set_xticks(range(len(names)), names)
ax.set_ylabel("latency, policy steps only (ms)")
ax.set_title("generation latency per backend (1 torch thread)")
ax.legend()
fig.tight_layout()
fig.savefig(out.with_suffix(".png"), dpi=120)
print("wrote", out.with_suffix(".json"), out.with_suffix(".png"))
