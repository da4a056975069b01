"""Stage I on Ray: each missing shard is one Ray task; the driver writes what comes back.

The shard plan is a pure function of the Stage I arguments, so a shard computed by a Ray
worker holds exactly the tensors the local loop computes (each task runs torch on one
thread, as a worker with one CPU does). Tasks return their tensors through Ray's object
store; the driver writes each shard atomically as it arrives and the manifest after it,
so resuming after the driver is killed keeps every finished shard. A task whose worker
process dies is retried by Ray (``max_retries``).

Needs the ``ray`` extra: ``pip install -e '.[ray]'``.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Iterator, Sequence

import torch

from lohp.errors import LohpError
from lohp.extras import require_module

INSTALL = "pip install -e '.[ray]'"
CONNECT_TIMEOUT = 3.0  # seconds to reach a cluster address before giving up
# Tests: a file path; the first task that finds no file there creates it and kills its own
# worker process (Ray must retry the task).
CRASH_ONCE: str | None = None


def _import_ray():
    return require_module("ray", "--ray (Stage I on Ray)")


def resolve_address(address: str | None) -> str | None:
    """The cluster to join: ``address``, else ``RAY_ADDRESS``, else None (start a local one)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_ray(address: str | None = None) -> None:
    """Fail in seconds, with one line, when Ray is missing or a given cluster is unreachable."""
    _import_ray()
    addr = resolve_address(address)
    if addr in (None, "local", "auto"):
        return
    hostport = addr.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise LohpError(f"Ray address {addr!r} is not HOST:PORT (e.g. 10.0.0.5:6379, or ray://HOST:10001)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise LohpError(f"cannot reach the Ray cluster at {addr} ({exc.strerror or exc}); start it with "
                        "'ray start --head' there, or fix --ray-address / RAY_ADDRESS") from None


def init(address: str | None = None, num_cpus: int | None = None):
    """Join the cluster (or start a local one with ``num_cpus``) unless already connected."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    addr = resolve_address(address)  # (callers check it first: lohp.trajectories.prepare does)
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": False,
                              "configure_logging": False}
    if addr in (None, "local"):
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
        if addr == "local":  # a new local cluster even when RAY_ADDRESS names another one
            kwargs["address"] = "local"
    else:
        kwargs["address"] = addr
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise LohpError(f"could not start or join Ray ({str(exc).splitlines()[0]})") from None
    return ray


def _shard_task(compute: Callable[..., tuple[dict, dict]], config: dict[str, Any], plan: Any, device: str,
                crash_once: str | None = None) -> tuple[dict, dict]:
    torch.set_num_threads(1)
    if crash_once and not os.path.exists(crash_once):
        open(crash_once, "w").close()
        os._exit(1)
    tensors, record = compute(config, plan, device)
    return {k: v.numpy() for k, v in tensors.items()}, record


def run_shards(compute: Callable[..., tuple[dict, dict]], config: dict[str, Any], plans: Sequence[Any],
               device: str = "cpu", address: str | None = None, workers: int | None = None,
               max_retries: int = 3) -> Iterator[tuple[Any, tuple[dict, dict]]]:
    """Yield ``(plan, (tensors, record))`` as shards finish, at most ``workers`` in flight.

    ``compute(config, plan, device)`` is one shard's work (Stage I passes ``compute_shard``);
    it and the plans travel to the workers by pickle, so this module needs no Stage I import.
    """
    if not plans:
        return
    ray = init(address, workers)
    remote = ray.remote(num_cpus=1, max_retries=max_retries)(_shard_task)
    limit = workers or max(int(ray.cluster_resources().get("CPU", 1)), 1)
    pending = list(plans)
    running: dict[Any, Any] = {}
    cfg_ref = ray.put(config)
    while pending or running:
        while pending and len(running) < limit:
            plan = pending.pop(0)
            ref = remote.remote(compute, cfg_ref, plan, device, CRASH_ONCE)
            running[ref] = plan
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            plan = running.pop(ref)
            try:
                arrays, record = ray.get(ref)
            except ray.exceptions.RayError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, LohpError):  # the shard's own error (e.g. a diverged optimizer)
                    raise LohpError(str(cause)) from None
                last = [ln for ln in str(exc).splitlines() if ln.strip()][-1].strip()
                raise LohpError(f"Stage I shard {plan.index} failed on Ray ({last}); re-run the same command "
                                "to resume (finished shards are kept)") from None
            yield plan, ({k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, record)
