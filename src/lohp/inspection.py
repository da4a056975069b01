"""``lohp inspect PATH`` for everything lohp writes besides stores: what a path holds, told by
the format tag it records, with every checksum re-checked.

- a **policy folder** (``policy.json``, ``lohp-policy/1``): its model card (the text of its
  ``README.md``), then the checks of ``policy.json``, ``policy.safetensors`` and, when there,
  the training checkpoint;
- a **training checkpoint** (``checkpoint.safetensors``, ``lohp-checkpoint/1``, with
  ``checkpoint.json``): its iteration and optimizer groups, checked against its policy;
- **generated weights** (``lohp generate --out FILE``, ``lohp-weights/1``): the task, the
  policy, the tensors, checked against the layout they record;
- a **LoRA adapter folder** (``lohp_lora.json``, ``lohp-lora/1``): the head and peft's files,
  checked against the sha256 lohp recorded for them;
- a **result JSON** (``lohp evaluate`` / ``lohp bench --json``): its rows (results are not
  sealed: people edit them).

A store (its folder, ``manifest.json``, a shard) is summarised by the store code
(:func:`lohp.trajectories.summarize`), unchanged. Every problem found is collected and
reported in one line (a ``LohpError``), so a user who suspects corruption learns all that
is wrong at once; nothing is written.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open

from lohp.errors import LohpError
from lohp.io import (
    CHECKPOINT_FORMAT,
    CHECKSUM_KEY,
    LORA_FORMAT,
    LORA_HEAD_FORMAT,
    META_DIGEST_KEY,
    POLICY_FORMAT,
    TRAJECTORIES_FORMAT,
    WEIGHTS_FORMAT,
    load_tensors,
    read_json,
    sha256_file,
)
from lohp.layout import ParamLayout
from lohp.policy.io import META, WEIGHTS
from lohp.policy_folder import build_policy
from lohp.training.card import code, is_evaluation, model_card
from lohp.training.checkpoints import CHECKPOINT, CHECKPOINT_META

LORA_INFO = "lohp_lora.json"
LORA_HEAD = "classifier.safetensors"
LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")
STORE_FILES = ("manifest.json", "config.json")
KINDS = ("store", "policy", "checkpoint", "generated weights", "LoRA adapter", "result")
WHAT = ("lohp inspect reads stores, policy folders, training checkpoints, generated .safetensors files, LoRA "
        "adapter folders and result JSON")


@dataclass
class Inspection:
    """What ``lohp inspect`` prints for one artefact: ``text`` (Markdown-like, every user
    name a code span) and ``summary`` (for ``--json``)."""

    kind: str
    path: Path
    text: str
    summary: dict[str, Any] = field(default_factory=dict)


class _Checks:
    """Checks run one after another, each problem kept (one line each)."""

    def __init__(self) -> None:
        self.done: list[str] = []
        self.problems: list[str] = []
        self.unsealed: list[str] = []

    def run(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            out = fn()
        except LohpError as exc:
            self.problems.append(str(exc))
            return None
        self.done.append(what)
        return out

    def fail(self, problem: str) -> None:
        self.problems.append(problem)

    def raise_problems(self, path: Path) -> None:
        if len(self.problems) == 1:
            raise LohpError(self.problems[0])
        if self.problems:
            raise LohpError(f"{path}: {len(self.problems)} problems: " + "; ".join(self.problems))

    def lines(self, verify: bool) -> list[str]:
        out = ["## Checks (lohp inspect)", ""] + [f"- {d}" for d in self.done]
        if not verify:
            out.append("- tensor checksums not verified (--no-verify)")
        if self.unsealed:
            out.append(f"- written by an older lohp without a metadata checksum: {', '.join(self.unsealed)} "
                       "(re-create them to add one)")
        out += ["", "all checksums verified" if verify else "metadata checksums verified; tensor data not read"]
        return out


# --------------------------------------------------------------------------- what a path is
def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LohpError(f"{path} is a truncated or corrupt safetensors file ({str(exc).splitlines()[0]})") from None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def artefact_kind(path: str | Path) -> tuple[str, Path]:
    """(kind, the path to inspect) of what ``path`` holds, from its names and format tags:
    a kind of :data:`KINDS`; a store's folder for anything inside a store. A path that holds
    nothing lohp wrote is one LohpError."""
    path = Path(path)
    if not path.exists():
        raise LohpError(f"nothing at {path}: no trajectory store, policy, checkpoint or generated file to inspect")
    mode = path.stat().st_mode
    if path.is_dir():
        if any((path / f).exists() for f in STORE_FILES):
            return "store", path
        if (path / META).exists() or (path / CHECKPOINT_META).exists() or (path / CHECKPOINT).exists():
            return "policy", path
        if (path / LORA_INFO).exists() or any((path / f).exists() for f in LORA_FILES):
            return "LoRA adapter", path
        return "store", path  # the store code's own one-line refusal (no manifest.json)
    if not stat.S_ISREG(mode):  # never open a device, FIFO or socket
        raise LohpError(f"{path} is not a regular file or a folder (a device, FIFO or socket); {WHAT}")
    name, parent = path.name, path.parent
    if name in STORE_FILES or (parent.name == "shards" and (parent.parent / "manifest.json").exists()):
        return "store", parent.parent if parent.name == "shards" else parent
    if name in (META, WEIGHTS):
        return "policy", parent
    if name in (CHECKPOINT, CHECKPOINT_META):
        return "checkpoint", path
    if name in (LORA_INFO, LORA_HEAD, *LORA_FILES):
        return "LoRA adapter", parent
    if path.suffix == ".safetensors":
        meta = _metadata(path)
        tag = meta.get("format")
        if tag == POLICY_FORMAT:
            return "policy", parent
        if tag == CHECKPOINT_FORMAT:
            return "checkpoint", path
        if tag == LORA_HEAD_FORMAT:
            return "LoRA adapter", parent
        if tag == TRAJECTORIES_FORMAT:
            raise LohpError(f"{path} is a trajectory shard outside its store's shards/ folder; inspect the store "
                            "folder that lists it (lohp inspect STORE)")
        if tag == WEIGHTS_FORMAT or "layout" in meta:  # files of lohp generate (untagged before format tags)
            return "generated weights", path
        raise LohpError(f"{path} is a safetensors file lohp did not write (format tag {tag!r}); {WHAT}")
    obj = _json(path) if path.suffix == ".json" else None
    if isinstance(obj, dict):
        tag = obj.get("format")
        if tag == POLICY_FORMAT:
            return "policy", parent
        if tag == LORA_FORMAT:
            return "LoRA adapter", parent
        if "benchmark" in obj and isinstance(obj.get("rows"), list):
            return "result", path
    raise LohpError(f"{path} is not something lohp wrote (no lohp format tag); {WHAT}")


def inspect_artefact(kind: str, path: str | Path, verify: bool = True) -> Inspection:
    """The inspection of an artefact of ``kind`` (not a store) at ``path`` (see
    :func:`artefact_kind`); every checksum re-checked, every problem in one LohpError."""
    path = Path(path)
    fn = {"policy": _policy, "checkpoint": _checkpoint, "generated weights": _generated,
          "LoRA adapter": _adapter, "result": _result}.get(kind)
    if fn is None:
        raise LohpError(f"lohp inspect cannot read a {kind!r} here; {WHAT}")
    return fn(path, verify)


# --------------------------------------------------------------------------- shared checks
def _sealed_json(checks: _Checks, path: Path, what: str, fmt: str | None = None) -> dict[str, Any] | None:
    if not path.exists():
        checks.fail(f"{what} {path} is missing")
        return None

    def read() -> dict[str, Any]:
        obj = read_json(path, what, sealed=True)
        if fmt is not None and obj.get("format") != fmt:
            raise LohpError(f"{path} is not a {fmt} file (format {obj.get('format')!r})")
        return obj

    obj = checks.run(f"{code(path.name)}: its metadata checksum matches", read)
    if obj is not None and CHECKSUM_KEY not in (_json(path) or {}):
        checks.done[-1] = f"{code(path.name)}: read (no metadata checksum)"
        checks.unsealed.append(code(path.name))
    return obj


def _tensors(checks: _Checks, path: Path, what: str, fix: str, fmt: str | None,
             old_untagged: bool = False) -> dict[str, torch.Tensor] | None:
    if not path.exists():
        checks.fail(f"{what} {path} is missing; {fix}")
        return None

    def read() -> dict[str, torch.Tensor]:
        tensors = load_tensors(path, what, fix)
        meta = _metadata(path)
        tag = meta.get("format")
        if fmt is not None and tag != fmt and not (old_untagged and tag is None):
            raise LohpError(f"{path} is not a {what} (format tag {tag!r}, expected {fmt!r}); {fix}")
        if META_DIGEST_KEY not in meta:
            checks.unsealed.append(code(path.name))
        return tensors

    return checks.run(f"{code(path.name)}: the sha256 of its data and of its metadata match", read)


def _fits(checks: _Checks, meta: dict[str, Any] | None, tensors: dict[str, torch.Tensor] | None, path: Path,
          what: str) -> None:
    """The tensors load into the policy ``meta`` describes."""
    if meta is None or tensors is None:
        return
    try:
        policy = build_policy(meta)
        policy.load_state_dict(tensors)
    except LohpError as exc:
        checks.fail(str(exc))
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        checks.fail(f"{path} does not fit the policy {META} describes ({str(exc).splitlines()[0][:160]}); the "
                    "files come from different runs")
    else:
        checks.done[-1] += f"; {what} {code(META)}"


# --------------------------------------------------------------------------- policy folder
def _policy(folder: Path, verify: bool) -> Inspection:
    checks = _Checks()
    fix = "retrain the policy (lohp train --overwrite), or restore the file from a copy"
    meta = _sealed_json(checks, folder / META, "policy description", POLICY_FORMAT)
    if verify:
        if not (folder / WEIGHTS).exists() and meta is not None:
            checks.fail(f"{folder} has no {WEIGHTS} yet (training did not reach its first checkpoint); resume "
                        "training with the same lohp train command")
        else:
            _fits(checks, meta, _tensors(checks, folder / WEIGHTS, "policy weights", fix, POLICY_FORMAT),
                  folder / WEIGHTS, "the weights fit")
    ckpt = _checkpoint_checks(checks, folder, meta, verify) \
        if (folder / CHECKPOINT).exists() or (folder / CHECKPOINT_META).exists() else None
    checks.raise_problems(folder)
    assert meta is not None
    card = model_card(folder, meta)
    text = card.rstrip("\n") + "\n\n" + "\n".join(checks.lines(verify)) + "\n"
    summary = {"kind": "policy", "path": str(folder), "family": meta.get("family"), "method": meta.get("method"),
               "iteration": meta.get("iteration"), "structure": (meta.get("structure") or {}).get("kind"),
               "parameters_generated": (meta.get("layout") or {}).get("size"),
               "feature_spec": meta.get("feature_spec") is not None, "checkpoint_iteration": ckpt,
               "checksums_ok": True if verify else None, "unsealed": checks.unsealed, "card": card}
    return Inspection("policy", folder, text, summary)


def _checkpoint_checks(checks: _Checks, folder: Path, meta: dict[str, Any] | None, verify: bool) -> int | None:
    fix = (f"delete {folder / CHECKPOINT} and {folder / CHECKPOINT_META} to restart this policy from iteration 0 "
           "(or pass --overwrite)")
    info = _sealed_json(checks, folder / CHECKPOINT_META, "checkpoint description")
    if verify:
        tensors = _tensors(checks, folder / CHECKPOINT, "training checkpoint", fix, CHECKPOINT_FORMAT,
                           old_untagged=True)
        if tensors is not None:
            part = {k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")}
            _fits(checks, meta, part, folder / CHECKPOINT, "its policy part fits")
    try:
        return None if info is None else int(info["iteration"])
    except (KeyError, TypeError, ValueError):
        checks.fail(f"checkpoint description {folder / CHECKPOINT_META} has no iteration; {fix}")
        return None


# --------------------------------------------------------------------------- checkpoint
def _checkpoint(path: Path, verify: bool) -> Inspection:
    folder = path.parent
    checks = _Checks()
    meta = _sealed_json(checks, folder / META, "policy description", POLICY_FORMAT) \
        if (folder / META).exists() else None
    iteration = _checkpoint_checks(checks, folder, meta, verify)
    checks.raise_problems(path)
    info = read_json(folder / CHECKPOINT_META, "checkpoint description", sealed=True)
    groups = [str(g.get("name", i)) for i, g in enumerate(info.get("param_groups") or [])]
    head = [f"# {code(path.name)}: a lohp training checkpoint", "",
            f"- policy folder: {code(folder)}" + (f" ({code(meta.get('method'))} on {code(meta.get('family'))})"
                                                  if meta else " (no policy.json beside it)"),
            f"- iteration {iteration:,}: the policy's weights and its AdamW state "
            f"({len(groups)} parameter group(s): {', '.join(code(g) for g in groups)})",
            "- re-running the lohp train command that wrote it resumes from here", ""]
    text = "\n".join(head + checks.lines(verify)) + "\n"
    return Inspection("checkpoint", path, text, {"kind": "checkpoint", "path": str(path), "iteration": iteration,
                                                 "param_groups": groups, "checksums_ok": True if verify else None,
                                                 "unsealed": checks.unsealed})


# --------------------------------------------------------------------------- generated weights
def _generated(path: Path, verify: bool) -> Inspection:
    checks = _Checks()
    fix = "generate them again (lohp generate ... --overwrite)"
    meta = _metadata(path)  # unreadable: nothing else can be checked
    tensors = _tensors(checks, path, "generated weights", fix, WEIGHTS_FORMAT, old_untagged=True) if verify else None
    layout = None
    try:
        layout = ParamLayout.from_dict(json.loads(meta["layout"]))
    except (KeyError, TypeError, ValueError) as exc:
        checks.fail(f"{path} records no readable layout ({exc.__class__.__name__}); {fix}")
    if layout is not None and tensors is not None:
        want = {e.name: list(e.shape) for e in layout.entries}
        got = {k: list(v.shape) for k, v in tensors.items()}
        if want != got:
            checks.fail(f"{path} holds tensors {got}, its layout says {want}; {fix}")
        else:
            checks.done[-1] += "; the tensors match the layout it records"
    checks.raise_problems(path)
    assert layout is not None
    shown = {k: meta[k] for k in ("task", "classes", "policy", "method", "refine", "max_length") if k in meta}
    lines = [f"# {code(path.name)}: weights generated by lohp", ""]
    lines += [f"- {k}: {code(v)}" for k, v in shown.items()]
    entries = ", ".join(f"{code(e.name)} {list(e.shape)}" for e in layout.entries)
    lines += [f"- d = {layout.size:,} values: {entries}", ""]
    text = "\n".join(lines + checks.lines(verify)) + "\n"
    return Inspection("generated weights", path, text,
                      {"kind": "generated weights", "path": str(path), "format": meta.get("format"), **shown,
                       "parameters": layout.size, "checksums_ok": True if verify else None,
                       "unsealed": checks.unsealed})


# --------------------------------------------------------------------------- LoRA adapter
def _adapter(folder: Path, verify: bool) -> Inspection:
    checks = _Checks()
    fix = "generate the adapter again (lohp generate ... --overwrite)"
    info = _sealed_json(checks, folder / LORA_INFO, "adapter description", LORA_FORMAT)
    if verify:
        _tensors(checks, folder / LORA_HEAD, "adapter head", fix, LORA_HEAD_FORMAT)
    recorded = (info or {}).get("files") or {}
    config = None
    for name in LORA_FILES:
        p = folder / name
        if not p.exists():
            checks.fail(f"{folder} lacks {name} (peft's adapter file); {fix}")
            continue
        if name.endswith(".json"):
            config = _json(p)
            if not isinstance(config, dict):
                checks.fail(f"{p} is not readable JSON; {fix}")
                continue
        elif verify:
            try:
                _metadata(p)
            except LohpError as exc:
                checks.fail(f"{exc}; {fix}")
                continue
        if name in recorded:
            if verify or name.endswith(".json"):
                if sha256_file(p) != recorded[name]:
                    checks.fail(f"{p} was changed after lohp exported it (its sha256 does not match the one in "
                                f"{LORA_INFO}); {fix}")
                    continue
                checks.done.append(f"{code(name)}: its sha256 matches the one recorded in {code(LORA_INFO)}")
        elif info is not None:
            checks.done.append(f"{code(name)}: readable (no sha256 recorded: exported by an older lohp)")
    checks.raise_problems(folder)
    assert info is not None
    config = config or {}
    lines = [f"# {code(folder.name or folder)}: a LoRA adapter generated by lohp", "",
             f"- base model: {code(info.get('base_model'))}; a standard PEFT adapter ({code(LORA_FILES[0])}, "
             f"{code(LORA_FILES[1])}) plus the head {code(LORA_HEAD)} ({info.get('n_classes', '?')} classes)",
             f"- LoRA rank {config.get('r', '?')}, alpha {config.get('lora_alpha', '?')}, target modules "
             + ", ".join(code(t) for t in (config.get("target_modules") or [])),
             *[f"- {k}: {code(info[k])}" for k in ("task", "classes", "policy", "method", "refine") if k in info],
             f"- use: {code(info.get('usage', ''))}", ""]
    text = "\n".join(lines + checks.lines(verify)) + "\n"
    return Inspection("LoRA adapter", folder, text,
                      {"kind": "LoRA adapter", "path": str(folder), "n_classes": info.get("n_classes"),
                       "rank": config.get("r"), "checksums_ok": True if verify else None,
                       "unsealed": checks.unsealed})


# --------------------------------------------------------------------------- result JSON
def _result(path: Path, verify: bool) -> Inspection:
    obj = _json(path)
    bench = obj.get("benchmark")
    command = "lohp evaluate" if is_evaluation(obj) else f"lohp bench {bench}"
    lines = [f"# {code(path.name)}: a result of {code(command)}",
             "", "Results are not sealed (people edit them and `lohp report` reads them): nothing to re-check.", "",
             "| method | steps | accuracy |", "|---|---|---|"]
    for row in obj.get("rows") or []:
        if isinstance(row, dict):
            acc = row.get("accuracy")
            lines.append(f"| {code(row.get('method', '?'), table=True)} | {row.get('steps') or '-'} | "
                         f"{f'{acc:.4f}' if isinstance(acc, (int, float)) else '-'} |")
    return Inspection("result", path, "\n".join(lines) + "\n",
                      {"kind": "result", "path": str(path), "benchmark": bench, "rows": len(obj.get("rows") or [])})


__all__ = ["KINDS", "Inspection", "artefact_kind", "inspect_artefact"]
