"""TrajectoryStore: offline optimizer trajectories on disk.

Layout of a store directory::

    config.json                 the arguments that define the store (checked on resume)
    manifest.json               layout, shards (with sha256), trajectories and their metrics
    shards/shard-00000.safetensors   theta [R, n_records, d] + metrics [R, n_records]
    shards/shard-00000.json     the shard's own record, written after its tensors

No pickle anywhere: tensors are safetensors, metadata is JSON. Every file is written to a
temporary name, flushed, fsync'ed and renamed, so a crash (even ``kill -9``) leaves either
the old file or the new one, never half of one. Reads memory-map the shards and slice
one trajectory's step range without loading the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open

from lohp.errors import LohpError
from lohp.io import TRAJECTORIES_FORMAT, ReadLock, read_json, sha256_file
from lohp.layout import ParamLayout
from lohp.tasks import make_family

FORMAT = TRAJECTORIES_FORMAT
MANIFEST = "manifest.json"
CONFIG = "config.json"
SHARD_DIR = "shards"


# --------------------------------------------------------------------------- the store
class TrajectoryStore:
    """Read access to a prepared store: trajectories, metrics, layout and tasks."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self.layout = ParamLayout.from_dict(manifest["layout"])
        self.trajectories: list[dict[str, Any]] = manifest["trajectories"]
        self.shards: list[dict[str, Any]] = manifest["shards"]
        self._verified: set[int] = set()
        self._read_lock: ReadLock | None = None  # released with the object (or close())
        self.family_options: dict[str, Any] = {}  # replace recorded family options (open(family_options=...))

    # -- opening ------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, verify: bool = False,
             family_options: dict[str, Any] | None = None) -> "TrajectoryStore":
        """``family_options`` replace recorded family options for this session (e.g. the
        ``path`` of a data file that moved; the family checks that its data did not change)."""
        path = Path(path)
        if not path.is_dir():
            raise LohpError(f"no trajectory store at {path}; create one with lohp prepare --out {path}")
        if not (path / MANIFEST).exists():
            hint = ("an interrupted lohp prepare: re-run it with the same arguments to resume"
                    if (path / CONFIG).exists() else "not a lohp store")
            raise LohpError(f"{path} has no {MANIFEST} ({hint})")
        # held while the store object lives: a prepare --overwrite cannot pull shards from under it
        lock = ReadLock(path, "store").acquire()
        try:
            return cls._open_locked(path, lock, verify, family_options)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_locked(cls, path: Path, lock: ReadLock, verify: bool,
                     family_options: dict[str, Any] | None) -> "TrajectoryStore":
        manifest = read_json(path / MANIFEST, "manifest", sealed=True)
        if manifest.get("format") != FORMAT:
            raise LohpError(f"{path / MANIFEST} is not a {FORMAT} manifest (format "
                            f"{manifest.get('format')!r})")
        try:
            store = cls(path, manifest)
            store._read_lock = lock
            store.family_options = dict(family_options or {})
            store.check_structure()
            store.check_model()
        except KeyError as exc:
            raise LohpError(f"manifest {path / MANIFEST} lacks {exc}; the store is damaged, "
                            "re-run lohp prepare with the same arguments") from None
        if verify:
            store.verify()
        return store

    def close(self) -> None:
        """Release the store's read lock (also released when the object is collected)."""
        if self._read_lock is not None:
            self._read_lock.release()

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    def __len__(self) -> int:
        return len(self.trajectories)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.trajectories)

    def shard_path(self, shard: int) -> Path:
        return self.path / SHARD_DIR / self.shards[shard]["file"]

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    # -- checks -------------------------------------------------------------------
    def check_structure(self) -> None:
        """Cheap consistency checks: every shard exists and its header fits the manifest."""
        d = self.layout.size
        for i, sh in enumerate(self.shards):
            p = self.shard_path(i)
            if not p.exists():
                raise LohpError(f"shard {p.name} listed in the manifest is missing; re-run "
                                "lohp prepare with the same arguments to rebuild it")
            try:
                with safe_open(p, framework="pt") as fh:
                    shape = tuple(fh.get_slice("theta").get_shape())
            except (SafetensorError, OSError, KeyError, ValueError) as exc:
                raise LohpError(f"shard {p.name} is truncated or corrupt ({exc}); re-run lohp "
                                "prepare with the same arguments to rebuild it") from None
            want = (sh["runs"], sh["records"], d)
            if shape != want:
                raise LohpError(f"shard {p.name} holds theta of shape {list(shape)} but the manifest "
                                f"says {list(want)}; the manifest does not match its shards, "
                                "re-run lohp prepare into a new folder")
        listed = [(tr.get("shard"), tr.get("index")) for tr in self.trajectories]
        runs = {(si, j) for si, sh in enumerate(self.shards) for j in range(sh["runs"])}
        if len(listed) != len(set(listed)) or set(listed) != runs:
            raise LohpError(f"the manifest lists {len(listed)} trajectories but its shards hold {len(runs)} "
                            "runs (or they point at the wrong rows); the manifest does not match its "
                            "shards, re-run lohp prepare into a new folder")

    def check_model(self) -> None:
        """The stored layout is checked on load against the model the store's tasks build."""
        cfg = self.config
        model_layout = self.family().sample(cfg.get("task_start", 0), cfg.get("split", "source")).layout
        try:
            self.layout.check_matches(model_layout, f"the model of its {cfg['family']} tasks")
        except LohpError as exc:
            raise LohpError(f"{self.path / MANIFEST}: {exc}; if the manifest is damaged, re-run lohp "
                            "prepare into a new folder") from None

    def verify_shard(self, shard: int) -> None:
        if shard in self._verified:
            return
        p = self.shard_path(shard)
        if sha256_file(p) != self.shards[shard]["sha256"]:
            raise LohpError(f"checksum mismatch for shard {p.name}: the file is corrupt or was "
                            "changed; re-run lohp prepare with the same arguments to rebuild it")
        self._verified.add(shard)

    def verify(self) -> None:
        for i in range(len(self.shards)):
            self.verify_shard(i)

    def check_layout(self, other: ParamLayout | torch.nn.Module, patterns: tuple[str, ...] | None = None) -> None:
        if isinstance(other, torch.nn.Module):
            other = ParamLayout.from_module(other, patterns or self.layout.names)
        self.layout.check_matches(other, f"the store {self.path}")

    # -- data access --------------------------------------------------------------
    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self.trajectories):
            raise IndexError(f"trajectory {i} out of range (store holds {len(self)})")
        tr = self.trajectories[i]
        return tr["shard"], tr["index"]

    def theta(self, i: int, start: int | None = None, stop: int | None = None, step: int | None = None
              ) -> torch.Tensor:
        """Recorded checkpoints ``[start:stop:step]`` of trajectory i as ``[n, d]``.

        Indices count *records* (see ``steps(i)`` for the optimizer step of each).
        Only the requested rows are read from the memory-mapped shard.
        """
        shard, idx = self._locate(i)
        self.verify_shard(shard)
        with safe_open(self.shard_path(shard), framework="pt") as fh:
            return fh.get_slice("theta")[idx:idx + 1, start:stop:step][0]

    def steps(self, i: int) -> list[int]:
        return self.trajectories[i]["steps"]

    def metrics(self, i: int) -> dict[str, list[float]]:
        return self.trajectories[i]["metrics"]

    def all_thetas(self, indices: list[int] | None = None) -> torch.Tensor:
        """Every (or the selected) trajectory as ``[n_traj, n_records, d]`` (loads them)."""
        indices = list(range(len(self))) if indices is None else indices
        return torch.stack([self.theta(i) for i in indices])

    def family(self):
        """The store's task family (recorded options, replaced by the ``family_options`` it was
        opened with)."""

        return make_family(self.config["family"], **{**self.config["family_config"], **self.family_options})

    def task(self, i: int):
        tr = self.trajectories[i]
        return self.family().sample(tr["task_seed"], tr["split"])


def summarize(store: TrajectoryStore, verify: bool = True) -> dict[str, Any]:
    """What ``lohp inspect`` shows: counts, final metrics per optimizer, size, checksums."""
    checksums_ok = None
    if verify:
        store.verify()  # raises a one-line LohpError on the first bad shard
        checksums_ok = True
    per: dict[str, dict[str, list[float]]] = {}
    for tr in store:
        d = per.setdefault(tr["optimizer"], {"metric": [], "loss": []})
        d["metric"].append(tr["metrics"]["eval_metric"][-1])
        d["loss"].append(tr["metrics"]["train_loss"][-1])
    optimizers = {}
    for name, d in per.items():
        m, l = torch.tensor(d["metric"], dtype=torch.float64), torch.tensor(d["loss"], dtype=torch.float64)
        optimizers[name] = {"count": len(d["metric"]), "final_metric_mean": m.mean().item(),
                            "final_metric_std": m.std(unbiased=False).item(),
                            "final_train_loss_mean": l.mean().item()}
    cfg = store.config
    return {"path": str(store.path), "complete": store.complete,
            "shards": len(store.shards), "shards_planned": store.manifest.get("shards_planned", len(store.shards)),
            "trajectories": len(store), "family": cfg["family"], "split": cfg["split"],
            "steps": cfg["steps"], "record_every": cfg["record_every"],
            "records_per_trajectory": store.shards[0]["records"] if store.shards else 0,
            "parameters": store.layout.size, "metric": store.manifest.get("metric_name", "metric"),
            "size_bytes": store.size_bytes(), "checksums_ok": checksums_ok, "optimizers": optimizers}
