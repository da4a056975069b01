"""lohp's file I/O, in one place (depends on ``errors`` only).

Every file lohp writes goes to a temporary name beside its target, is flushed, fsync'ed
and renamed, so a crash (even ``kill -9``) leaves the old file or the new one, never half
of one. Tensor files are safetensors (no pickle anywhere) and carry a sha256 of their
tensor data in their metadata (``lohp_sha256``) and a sha256 of the rest of their metadata
(``lohp_meta_sha256``), checked by :func:`load_tensors`, so a flipped byte inside the data
(header intact) or an edited metadata value is refused instead of read. JSON files are
written with sorted keys; the metadata JSON lohp reads back (a store's manifest and config,
a policy's and a checkpoint's description) is *sealed*: it carries a ``checksum`` of its
own content, checked by :func:`read_json` (``sealed=True``), so an edit that would silently
change what lohp does (a seed, a split, a step count) is refused in one line. Result JSON
(benchmark and evaluate outputs, which people edit) is not sealed. An artefact written
before sealing opens with one warning line. Format tags name what a file is and its version.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lohp.errors import LohpError

# Format tags: what a file is, and its version.
POLICY_FORMAT = "lohp-policy/1"
TRAJECTORIES_FORMAT = "lohp-trajectories/1"
CHECKPOINT_FORMAT = "lohp-checkpoint/1"      # a training checkpoint (policy + optimizer state)
WEIGHTS_FORMAT = "lohp-weights/1"            # generated weights (lohp generate --out FILE)
LORA_HEAD_FORMAT = "lohp-lora-head/1"        # the head of an exported LoRA adapter folder
LORA_FORMAT = "lohp-lora/1"                  # the description of an exported LoRA adapter folder
DIGEST_KEY = "lohp_sha256"
META_DIGEST_KEY = "lohp_meta_sha256"
CHECKSUM_KEY = "checksum"  # of a sealed JSON file
_WARNED: set[str] = set()


def _json_digest(obj: Any) -> str:
    """sha256 of the canonical JSON text of ``obj`` (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def warn_unsealed(path: Path | str, what: str) -> None:
    """One stderr line per process for artefacts written before lohp sealed its metadata."""
    if "unsealed" not in _WARNED:
        _WARNED.add("unsealed")
        print(f"lohp: warning: {what} {path} was written by an older lohp without a metadata checksum; "
              "opened unchecked (re-create it to add one)", file=sys.stderr)


def check_format(found: Any, expected: str, path: Path | str, what: str) -> None:
    """Refuse (one line) a file whose format tag is not ``expected``."""
    if found != expected:
        raise LohpError(f"{path} is not a {what} ({expected}; found {found!r})")


# --------------------------------------------------------------------------- atomic writes
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def _new_temp(path: Path) -> str:
    """A temporary file beside ``path`` with ordinary permissions (mkstemp gives 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    return tmp


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM until the block ends, then deliver them: a group of files that
    must agree (a checkpoint's tensors and its description) is never left half-replaced by
    a signal. ``kill -9`` cannot be held; readers of such groups trust the file written first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in sigs}
    for s in sigs:
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s in sigs:
            signal.signal(s, previous[s])
        for s in dict.fromkeys(held):
            signal.raise_signal(s)


def check_output_file(path: Path | str) -> Path:
    """Refuse (one line) an output path that exists and is not a regular file (a folder, a
    device such as /dev/null, a FIFO, a socket, a dangling link): lohp replaces its outputs by
    renaming a new file over them, which would replace the special file itself, so this
    holds with or without ``--overwrite``. A link to a regular file is allowed."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_file():
        kind = ("a folder" if path.is_dir() else "a dangling link" if not path.exists()
                else "not a regular file (a device, FIFO or socket)")
        raise LohpError(f"{path} exists and is {kind}; lohp writes its outputs as regular files and never replaces "
                        "anything else, so choose another output path")
    return path


def _replace_with(path: Path, write: Any) -> None:
    """``write(tmp)`` fills a temporary file beside ``path`` (and fsyncs it); the rename then
    makes it ``path`` in one step. On any failure the temporary file is removed."""
    path = check_output_file(path)
    tmp = _new_temp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    _replace_with(path, write)


def atomic_write_json(path: Path, obj: Any, sealed: bool = False) -> None:
    """``obj`` as JSON; ``sealed``: with a ``checksum`` of its content (a dict), which
    :func:`read_json` with ``sealed=True`` verifies."""
    if sealed:
        if not isinstance(obj, dict):
            raise TypeError("only a JSON object can be sealed")
        plain = json.loads(json.dumps({k: v for k, v in obj.items() if k != CHECKSUM_KEY}))  # as read back
        obj = {**plain, CHECKSUM_KEY: _json_digest(plain)}
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors' names, dtypes, shapes and bytes (in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor],
                        metadata: dict[str, str] | None = None) -> None:
    """A safetensors file, written atomically, with the digest of its data in its metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {k: v for k, v in (metadata or {}).items() if k not in (DIGEST_KEY, META_DIGEST_KEY)}
    metadata = {**metadata, META_DIGEST_KEY: _json_digest(metadata), DIGEST_KEY: tensor_digest(tensors)}

    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, _FILE_MODE)  # safetensors creates the file anew, private (0600): a shared policy is unreadable
        with open(tmp, "r+b") as fh:
            _sort_metadata(fh)
            os.fsync(fh.fileno())

    _replace_with(path, write)


def _sort_metadata(fh) -> None:
    """safetensors writes ``__metadata__`` from a Rust hash map, in a random key order; sort it
    (same length, rewritten in place) so equal tensors always give equal bytes and checksums."""
    n = int.from_bytes(fh.read(8), "little")
    header = json.loads(fh.read(n))
    if len(header.get("__metadata__") or {}) > 1:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= n:
            fh.seek(8)
            fh.write(text.ljust(n))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: Path, what: str, sealed: bool = False) -> Any:
    """A JSON file; ``sealed``: its ``checksum`` is verified (an edited file is one LohpError,
    a file without one opens with :func:`warn_unsealed`) and removed from what is returned."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LohpError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LohpError(f"{what} {path} is corrupt ({exc.__class__.__name__}); re-create it "
                        "(for a store: re-run lohp prepare with the same arguments)") from None
    if not sealed:
        return obj
    if not isinstance(obj, dict):
        raise LohpError(f"{what} {path} is corrupt (not a JSON object); re-create it")
    if CHECKSUM_KEY not in obj:
        warn_unsealed(path, what)
        return obj
    want = obj.pop(CHECKSUM_KEY)
    if _json_digest(obj) != want:
        raise LohpError(f"{what} {path} was changed after lohp wrote it (its checksum does not match); lohp does "
                        "not read edited metadata: restore it or re-create the artefact")
    return obj


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` if needed and prove we can write there, or fail with one line."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise LohpError(f"cannot write to output folder {path} ({exc.strerror or exc}); "
                        "choose a writable --out") from None
    return path


def load_tensors(path: Path | str, what: str, fix: str) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file lohp wrote, checked against the digest it was written
    with; a truncated, unreadable or altered file is one LohpError naming ``what`` and ``fix``."""
    return load_tensors_and_metadata(path, what, fix)[0]


def load_tensors_and_metadata(path: Path | str, what: str, fix: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """:func:`load_tensors` and the file's own metadata (without lohp's digests), checked alike."""

    path = Path(path)
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LohpError(f"{what} {path} is truncated or corrupt ({str(exc).splitlines()[0]}); {fix}") from None
    want = meta.get(DIGEST_KEY)
    if want is not None and tensor_digest(tensors) != want:
        raise LohpError(f"{what} {path} is corrupt (its data do not match the sha256 it was written with); {fix}")
    rest = {k: v for k, v in meta.items() if k not in (DIGEST_KEY, META_DIGEST_KEY)}
    if META_DIGEST_KEY not in meta:
        warn_unsealed(path, what)
    elif _json_digest(rest) != meta[META_DIGEST_KEY]:
        raise LohpError(f"{what} {path} has metadata changed after lohp wrote it (its checksum does not match); "
                        f"{fix}")
    return tensors, rest


def check_finite(tensor: torch.Tensor, what: str, fix: str) -> None:
    """Refuse NaN / inf values in ``tensor`` (one line: where, how many, the fix)."""
    if not torch.is_floating_point(tensor):
        return
    bad = (~torch.isfinite(tensor)).sum().item()
    if bad:
        raise LohpError(f"{what} holds {bad} NaN or inf value(s) of {tensor.numel()}; {fix}")


LOCK_FILE = ".lohp.lock"
READERS_FILE = ".lohp.readers"  # readers hold it shared; only a replacing writer takes it exclusively
_WRITING: set[str] = set()  # folders this process is replacing (its own reads need no lock)


class ReadLock:
    """A shared lock on a folder lohp wrote (a store) for as long as a reader uses it: a
    writer that would replace it (``prepare --overwrite`` under a streaming ``train``) is
    refused in one line instead of pulling files from under the reader, and a reader is
    refused while such a replacement runs. A writer that only adds (a resumed ``prepare``,
    whose files appear by atomic renames) does not conflict with readers. Best effort where
    the folder cannot hold a lock file (read-only media): the reader goes on unlocked."""

    def __init__(self, folder: Path | str, what: str):
        self.folder = Path(folder)
        self.what = what
        self._fh = None

    def acquire(self) -> "ReadLock":
        import fcntl

        if self._fh is not None or str(self.folder.resolve()) in _WRITING:
            return self
        try:
            fh = open(self.folder / READERS_FILE, "a")
        except OSError:
            return self
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise LohpError(f"{self.folder} is being replaced by another lohp command (--overwrite); wait for it to "
                            f"finish, then open the {self.what} again") from None
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "ReadLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class OutputLock:
    """An exclusive lock on an output folder for one writing command (``prepare`` into a
    store, ``train`` into a policy folder): a second command on the same folder is refused
    in one line instead of interleaving writes. ``flock`` based, so a killed process
    releases it (a resumed command never finds a stale lock)."""

    def __init__(self, folder: Path | str, what: str, replace: bool = False):
        folder = Path(folder)
        self.replace = replace  # it will delete what is there: no reader may hold the folder
        self._readers = None
        # a folder this command creates and then writes nothing into (it was refused) is
        # removed again on the way out: a refusal leaves nothing behind
        self._created = not os.path.lexists(folder)
        self.path = ensure_writable_dir(folder) / LOCK_FILE
        self.what = what
        self._fh = None

    def __enter__(self) -> "OutputLock":
        import fcntl

        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise LohpError(f"{self.path.parent} is in use by another {self.what} ({holder}); wait for it to "
                            "finish or stop it, then run this command again") from None
        if self.replace:
            readers = open(self.path.parent / READERS_FILE, "a")
            try:
                fcntl.flock(readers.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                readers.close()
                fh.close()
                raise LohpError(f"{self.path.parent} is being read by another lohp command (e.g. a train streaming "
                                "it); wait for it to finish or stop it, then replace it") from None
            self._readers = readers
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._fh = fh
        if self.replace:
            _WRITING.add(str(self.path.parent.resolve()))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            if self._created and exc[0] is not None:
                folder = self.path.parent
                try:
                    if {p.name for p in folder.iterdir()} <= {LOCK_FILE, READERS_FILE}:
                        for name in (LOCK_FILE, READERS_FILE):
                            (folder / name).unlink(missing_ok=True)
                        folder.rmdir()
                except OSError:
                    pass  # best effort: the refusal itself is what the user must see
            _WRITING.discard(str(self.path.parent.resolve()))
            if self._readers is not None:
                self._readers.close()
                self._readers = None
            self._fh.close()  # closing releases the flock
            self._fh = None
