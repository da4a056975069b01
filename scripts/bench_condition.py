"""What the LoRA condition costs and what cheaper settings keep (issue 21, item 4).

    python scripts/bench_condition.py runs/speed/condition POLICY_DIR [--tasks 8] [--repeats 5]

A LoRA policy's condition is one frozen MiniLM pass over the task's training texts, then
the coreset summary; on CPU that pass costs more than the policy's steps. For a trained
LoRA policy and held-out tasks of its family, each row computes the condition from fewer
training texts per class (the first m of each class) and/or texts truncated to fewer
tokens (the tokenizer's own truncation: the first L - 2 word pieces, then [SEP]), and
one row runs the frozen pass one text at a time (what batching saves). Per row: the
median ms of the condition from token ids (frozen pass + summary), the held-out accuracy
of the generated weights (mean over tasks; the evaluation texts are untouched), and the
time-to-accuracy ratio of the LoRA table with this condition: per task, the wall time of
full-batch Adam (torch.optim, the store's learning rate, at most 10 T steps) to first
reach the generated weights' accuracy, over (policy steps + condition) ms; the median
over tasks. Where Adam never reaches it the ratio is a lower bound (the time of 10 T
steps). Writes OUT.json and OUT.png and prints a table; one torch thread. ``--retime``
re-measures only the milliseconds of an existing OUT.json (on a quieter machine).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from lohp import lora
from lohp.bench.harness import adam_times_to_accuracies
from lohp.condition import class_means, summarize
from lohp.generation import Generator
from lohp.optim import DEFAULTS


def truncated(ids: torch.Tensor, length: int, sep: int) -> torch.Tensor:
    """Token ids as the tokenizer gives them at ``max_length=length``: a text that was cut
    keeps its first ``length - 1`` ids and ends with [SEP]."""
    if length >= ids.shape[1]:
        return ids
    out = ids[:, :length].clone()
    cut = ids[:, length] != 0  # the text went on past ``length``: it must end with [SEP] here
    out[cut, length - 1] = sep
    return out


def subset(task, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.cat([(task.y_train == c).nonzero().flatten()[:per_class] for c in range(task.n_classes)])
    return task.x_train[keep], task.y_train[keep]


@torch.no_grad()
def embed(ids: torch.Tensor, one_by_one: bool) -> torch.Tensor:
    if one_by_one:
        return torch.cat([lora.frozen_embeddings(ids[i:i + 1]) for i in range(len(ids))])
    return lora.frozen_embeddings(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("policy")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--texts", default="16,8,4,2", help="training texts per class, comma-separated")
    ap.add_argument("--lengths", default="32,16,8", help="tokens per text, comma-separated")
    ap.add_argument("--retime", action="store_true",
                    help="re-measure only the milliseconds of an existing OUT.json (accuracies and Adam's times "
                         "kept), e.g. on a quieter machine")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    gen = Generator.load(args.policy, backend="trace")
    meta = gen.meta
    tasks = gen.family().heldout_tasks(args.tasks)
    policy = gen.policy_for(tasks[0])
    points = policy.condition_points
    sep = lora.tokenizer().sep_token_id
    T = int(meta["total_steps"])
    adam_hp = {**DEFAULTS["adam"], **meta["store_hparams"]["adam"]}
    latency_ms = gen.latency(tasks[0], repeats=20)["latency_ms"]
    full_len = tasks[0].x_train.shape[1]
    shots = min(int(torch.bincount(t.y_train).min()) for t in tasks)

    variants = [(m, L, False) for L in [int(v) for v in args.lengths.split(",")]
                for m in [int(v) for v in args.texts.split(",")] if m <= shots and 3 <= L <= full_len]
    variants.append((shots, full_len, True))
    if args.retime:
        result = json.loads(out.with_suffix(".json").read_text())
        for r in result["rows"]:
            ms = []
            for t in tasks:
                ids, y = subset(t, r["texts_per_class"])
                ids = truncated(ids, r["max_length"], sep)
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    summarize(embed(ids, r["one_text_per_pass"]), y, t.n_classes, points)
                    times.append(time.perf_counter() - t0)
                ms.append(1e3 * statistics.median(times))
            r.update(condition_ms=statistics.median(ms), latency_ms=latency_ms,
                     latency_with_condition_ms=latency_ms + statistics.median(ms))
            r["time_to_accuracy_speedup"] = float(np.median([a / r["latency_with_condition_ms"] for a in r["adam_ms"]]))
            r["time_to_accuracy_speedup_without_condition"] = float(np.median([a / latency_ms for a in r["adam_ms"]]))
        rows = result["rows"]
    else:
        rows = measure(variants, tasks, gen, points, sep, args.repeats, latency_ms, T, adam_hp)
    report(rows, tasks, shots, full_len, meta, points, T, adam_hp, args, out)


def measure(variants, tasks, gen, points, sep, repeats, latency_ms, T, adam_hp) -> list[dict]:
    rows = []
    for m, L, one_by_one in variants:
        accs, ms = [], []
        for t in tasks:
            ids, y = subset(t, m)
            ids = truncated(ids, L, sep)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                emb = embed(ids, one_by_one)
                summarize(emb, y, t.n_classes, points)
                times.append(time.perf_counter() - t0)
            ms.append(1e3 * statistics.median(times))
            variant = dataclasses.replace(t, condition_fn=lambda _, c=class_means(emb, y, t.n_classes): c,
                                          condition_features=lambda _, f=(emb, y): f)
            theta = gen.generate_batch([variant])[0]
            accs.append(t.evaluate(theta)[t.metric_name])
        rows.append({"texts_per_class": m, "max_length": L, "one_text_per_pass": one_by_one,
                     "condition_ms": statistics.median(ms), "latency_ms": latency_ms,
                     "latency_with_condition_ms": latency_ms + statistics.median(ms),
                     "accuracy": float(np.mean(accs)), "per_task": accs})
        print(f"m={m:>2} L={L:>2}{' one-by-one' if one_by_one else ''}: condition {rows[-1]['condition_ms']:.1f} ms, "
              f"accuracy {rows[-1]['accuracy']:.4f}", flush=True)

    # one Adam run per task serves every row's target
    for i, t in enumerate(tasks):
        s0 = gen.initial_state(t)
        reached = adam_times_to_accuracies(t, s0, [r["per_task"][i] for r in rows], adam_hp, 10 * T)
        for r, (seconds, step) in zip(rows, reached):
            r.setdefault("adam_ms", []).append(1e3 * seconds)
            r.setdefault("adam_reached", []).append(step is not None)
    for r in rows:
        r["time_to_accuracy_speedup"] = float(np.median([a / r["latency_with_condition_ms"] for a in r["adam_ms"]]))
        r["time_to_accuracy_speedup_without_condition"] = float(np.median([a / r["latency_ms"] for a in r["adam_ms"]]))
        r["adam_reached"] = sum(r["adam_reached"])
    return rows


def report(rows, tasks, shots, full_len, meta, points, T, adam_hp, args, out) -> None:
    full = next(r for r in rows if r["texts_per_class"] == shots and r["max_length"] == full_len
                and not r["one_text_per_pass"])
    header = (f"{'texts/class':>11} {'tokens':>6} {'pass':>10} {'cond ms':>8} {'steps ms':>8} {'accuracy':>8} "
              f"{'vs full':>8} {'Adam/(ms+cond)':>14} {'reached':>7}")
    print(header)
    for r in rows:
        print(f"{r['texts_per_class']:>11} {r['max_length']:>6} {'one text' if r['one_text_per_pass'] else 'batched':>10} "
              f"{r['condition_ms']:>8.1f} {r['latency_ms']:>8.1f} {r['accuracy']:>8.4f} "
              f"{r['accuracy'] - full['accuracy']:>+8.4f} {r['time_to_accuracy_speedup']:>14.1f} "
              f"{r['adam_reached']:>4}/{len(tasks)}")
    result = {"policy": str(args.policy), "family": meta["family"], "tasks": len(tasks), "threads": 1,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
              "condition_points": points, "total_steps": T, "adam_lr": adam_hp["lr"],
              "load_average_1min_at_end": os.getloadavg()[0], "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for L in sorted({r["max_length"] for r in rows}, reverse=True):
        sel = [r for r in rows if r["max_length"] == L and not r["one_text_per_pass"]]
        ax.plot([r["condition_ms"] for r in sel], [r["accuracy"] for r in sel], "o-", label=f"{L} tokens")
        for r in sel:
            ax.annotate(str(r["texts_per_class"]), (r["condition_ms"], r["accuracy"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    for r in rows:
        if r["one_text_per_pass"]:
            ax.plot([r["condition_ms"]], [r["accuracy"]], "kx", label="one text per pass")
    ax.set_xscale("log")
    ax.set_xlabel("condition ms (frozen MiniLM pass + summary), log scale; labels: texts per class")
    ax.set_ylabel(f"held-out accuracy (mean of {len(tasks)} tasks)")
    ax.set_title(f"LoRA condition cost vs accuracy ({meta['family']}, 1 thread)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
