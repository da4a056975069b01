"""Reopening a policy folder through every registry its ``policy.json`` names: the method
(:mod:`lohp.losses`), the policy options and the structure kind (:mod:`lohp.policy`). A
name this build does not have is refused in one line.

It sits above both packages, so the policy package never imports the losses (the losses
use the policy); the files themselves are :mod:`lohp.policy.io`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lohp.errors import LohpError
from lohp.losses import method_names
from lohp.policy import LohpPolicy
from lohp.policy.io import META, WEIGHTS, build_network, load_state, read_meta


def check_method(meta: dict[str, Any]) -> None:
    """Refuse a policy whose recorded method this build does not have."""
    method = meta.get("method")
    if method is not None and method not in method_names():
        raise LohpError(f"the policy was trained with method {method!r}, which this lohp build does not have "
                        f"(it has {', '.join(method_names())}); upgrade lohp, register that method, or retrain "
                        "with one of those")


def build_policy(meta: dict[str, Any]) -> LohpPolicy:
    """Rebuild the network a ``policy.json`` describes, through the names it recorded."""
    check_method(meta)
    return build_network(meta)


def load_policy(directory: str | Path, device: str = "cpu") -> tuple[LohpPolicy, dict[str, Any]]:
    directory = Path(directory)
    meta = read_meta(directory)
    try:
        policy = build_policy(meta)
    except (KeyError, TypeError) as exc:
        raise LohpError(f"{directory / META} is incomplete ({exc!r}); retrain the policy") from None
    load_state(policy, directory / WEIGHTS)
    return policy.to(device).eval(), meta
