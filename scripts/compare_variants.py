"""Loss variants side by side: same training-time budget, same held-out tasks, one process.

    python scripts/compare_variants.py domain 120 "lo-di,lo-hp,lo-hp:b0.8" '{"b0.8": {"loss": {"beta": 0.8}}}'

SCENARIO is digits, domain (rotated MNIST, held-out 0 degrees, whole MLP), domain75,
transfer, fewshotS (S-shot 5-way episodes) or fewshotS-tT (source episodes trained on T
images per class: the family option target_shots);
VARIANTS are METHOD[:TAG], a TAG's loss / policy / train options in the JSON argument
(plus "k" per tag, "grad": true for Adam rows, "seeds": N). Work goes to runs/exp/SCENARIO (resumable).
docs/method.md, section 'Variants of the shipped loss', was measured with this script.
"""
import json, sys
from pathlib import Path

from lohp.bench.harness import format_accuracy
from lohp.bench.scenario import Variant, budgeted, learned_row, s0_sampler, stage_one, gradient_rows
scen, budget = sys.argv[1], float(sys.argv[2])
names = sys.argv[3].split(",")
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
seeds = int(extra.pop("seeds", 1))
work = Path(f"runs/exp/{scen}")
if scen == "digits":
    store = stage_one(work, "digits", {}, 96, 32, 32)
    pol, tr = {}, {}
    ntasks = 40
elif scen == "domain":
    store = stage_one(work, "rotated-mnist", {"heldout_domain": 0, "n_way": 5, "hidden": 32}, 64, 32, 32)
    pol, tr = {"token_size": 32}, {"lr": 3e-3, "eval_tasks": 8, "diagnostic_trajectories": 8}
    ntasks = 20
elif scen == "domain75":
    store = stage_one(work, "rotated-mnist", {"heldout_domain": 75, "n_way": 5, "hidden": 32}, 64, 32, 32)
    pol, tr = {"token_size": 32}, {"lr": 3e-3, "eval_tasks": 8, "diagnostic_trajectories": 8}
    ntasks = 20
elif scen.startswith("fewshot"):
    shots, _, target = scen[len("fewshot"):].partition("-t")
    fam = {"n_way": 5, "shots": int(shots), "queries": 15, **({"target_shots": int(target)} if target else {})}
    store = stage_one(work, "openclipart", fam, 96, 32, 16)
    pol, tr = {"token_size": 64}, {}
    ntasks = 200
elif scen == "transfer":
    store = stage_one(work, "openclipart", {"n_way": 5}, 96, 32, 32)
    pol, tr = {"token_size": 64}, {}
    ntasks = 40
tasks = store.family().heldout_tasks(ntasks)
s0_for = s0_sampler(tasks, store)
hp = {o["name"]: o["hparams"] for o in store.config["optimizers"]}
out = []
if extra.pop("grad", False):
    for r in gradient_rows(tasks, hp, s0_for, seeds, 32, 32, [("adam", "adam", 32), ("adam-n", "adam", 16)], print):
        print(r["method"], round(r["accuracy"], 4), round(r["accuracy_wide"], 4), flush=True)
    from lohp.bench.baselines import SKEPTIC, BaselineContext, baseline_rows
    s0 = s0_for(0)
    ctx = BaselineContext(store.family(), hp.get("adam"), 32, None, {t.name: s0[i] for i, t in enumerate(tasks)})
    for r in baseline_rows(SKEPTIC + ("adam-means",), tasks, ctx):
        print(r["method"], round(r["accuracy"], 4), flush=True)
for spec in names:
    name, _, tag = spec.partition(":")
    lo = dict(extra.get(tag, {}).get("loss", {}))
    po = {**pol, **extra.get(tag, {}).get("policy", {})}
    to = budgeted(budget, **tr, **extra.get(tag, {}).get("train", {}))
    k = extra.get(tag, {}).get("k", 2)
    v = Variant(spec.replace(":", "_"), name, k=None if name == "hypernetwork" else k, loss_options=lo, policy_options=po, train_options=to)
    row, _ = learned_row(work, store, v, tasks, s0_for, seeds, 0, 16 if scen != "domain" else 8, lambda s: None, latency_repeats=5)
    import csv
    from lohp.bench.scenario import policy_dir
    log = list(csv.DictReader(open(policy_dir(work, v, 0) / "log.csv")))
    print(f"{spec:30s} acc {format_accuracy(row)} wide {row['accuracy_wide']:.4f} it {log[-1]['iteration']} "
          f"cos {row['diagnostics']['cos_real']:.3f} dist {row['diagnostics']['dist']:.2f} lat {row['latency_ms']:.2f} "
          f"lat+cond {row['latency_with_condition_ms']:.2f} N {row['steps']} {row['matching']} seeds {row['seeds']}", flush=True)
