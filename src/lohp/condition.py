"""Task conditions: everything a policy sees of a task (one concept, one place).

A condition summarises a task's training split per class. Two forms share one tensor type:

- **class means** ``[C, F]``: one point per class (m = 1), the form every policy trained
  before coresets uses, and still what ``points=1`` gives, bit for bit;
- **coreset** ``[C, m, F + 1]``: m weighted points per class. ``[..., :F]`` are the points
  (k-means centroids of the class's rows), ``[..., F]`` each point's *share* of its class
  (its cluster's row count / the class's row count; the shares of a class sum to 1). A
  class with no more than m rows is represented exactly: each row is a point with share
  1 / rows, and the slots left over are padding with share 0 (a copy of a real row, so
  the tensor stays finite and the padding adds nothing to any sum).

The surrogate loss of :mod:`lohp.policy.surrogate` weighs point i of class c by
``share_ci / C``, so every class weighs 1/C as with the class means, and m = 1 is exactly
today's surrogate. Why more than the means: a gradient optimizer trained on the class
means alone lands well short of one trained on the full split (the means carry no spread),
and any policy that imitates it from the means inherits that ceiling; k-means points lift
it most of the way (docs/conditions.md has the measurements).

The summary is deterministic for a seed (random distinct rows from a fixed generator as the
first centres, then a fixed number of Lloyd iterations), batched over classes in torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lohp.errors import LohpError

# Points per class of the default condition (the policy option condition_points=None),
# capped at the smallest class's training rows. Chosen by measurement (docs/conditions.md).
DEFAULT_POINTS = 8
KMEANS_ITERATIONS = 3  # more Lloyd iterations did not change adam-cond's accuracy (docs/conditions.md)
KMEANS_SEED = 0


def class_means(x: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per-class mean rows ``[C, F]`` (a class without rows gets zeros)."""
    onehot = F.one_hot(y, n_classes).to(x.dtype)
    counts = onehot.sum(0).clamp_min(1.0)
    return (onehot.T @ x.reshape(len(x), -1)) / counts[:, None]


def check_points(points: int) -> int:
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise LohpError(f"condition points per class must be a whole number >= 1 (got {points!r}); "
                        "use 1 for class means, or e.g. 8")
    return points


def default_points(min_class_rows: int) -> int:
    """m of the default condition: DEFAULT_POINTS, capped at the smallest class's training rows."""
    return max(1, min(DEFAULT_POINTS, min_class_rows))


def class_rows(y: torch.Tensor, n_classes: int) -> list[int]:
    """Training rows per class."""
    return torch.bincount(y, minlength=n_classes)[:n_classes].tolist()


def coreset(x: torch.Tensor, y: torch.Tensor, n_classes: int, points: int, seed: int = KMEANS_SEED,
            iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """The coreset condition ``[C, points, F + 1]`` of rows ``x [n, ...]`` labelled ``y``
    (see the module doc). ``points=1`` gives the weighted form of the class means (the
    :func:`summarize` of ``points=1`` is the plain ``[C, F]`` means form)."""
    points = check_points(points)
    x = x.reshape(len(x), -1)
    if not torch.isfinite(x).all():
        raise LohpError("the task's condition (from its training split) holds features with NaN or inf, so no "
                        "summary can be computed: clean the data")
    n_feat = x.shape[1]
    counts = class_rows(y, n_classes)
    if min(counts) == 0:
        raise LohpError(f"class {counts.index(0)} has no training rows, so the task has no condition for it; "
                        "every class needs at least one training example")
    order = torch.argsort(y, stable=True)
    xs, n_max = x[order], max(counts)
    # classes padded to one batch: X [C, n_max, F], valid [C, n_max]
    cnt = torch.tensor(counts)
    starts = torch.cumsum(cnt, 0) - cnt
    pos = torch.arange(max(n_max, points))[None, :]  # at least `points` slots: every class may be smaller
    X = xs[starts[:, None] + torch.minimum(pos, cnt[:, None] - 1)]   # a short class repeats its last row
    valid = pos < cnt[:, None]
    sq = X.square().sum(-1)
    cent = _forgy(X, valid, points, torch.Generator().manual_seed(int(seed)))
    size = torch.zeros(cent.shape[:2], dtype=x.dtype)
    for _ in range(max(int(iterations), 1)):
        assign = _assign(X, valid, cent, sq)                               # [C, n_max, m]
        size = assign.sum(1)                                               # [C, m]
        new = assign.transpose(1, 2) @ X / size.clamp_min(1.0)[..., None]
        cent = torch.where(size[..., None] > 0, new, cent)                 # an empty cluster keeps its centre
    # each centre is the mean of the rows it was last assigned, so the share-weighted mean
    # of the points is the class mean (up to rounding)
    share = size / torch.tensor(counts, dtype=x.dtype)[:, None]
    out = torch.cat([cent, share[..., None]], dim=-1)
    # classes with no more rows than points: the rows themselves (exact), padding share 0
    for c, n in enumerate(counts):
        if n <= points:
            rows = X[c, :n]
            pad = rows[:1].expand(points - n, n_feat)
            out[c, :, :n_feat] = torch.cat([rows, pad])
            out[c, :, n_feat] = torch.cat([torch.full((n,), 1.0 / n), torch.zeros(points - n)]).to(x.dtype)
    return out


def _sq_dist(X: torch.Tensor, sq: torch.Tensor, cent: torch.Tensor) -> torch.Tensor:
    """Squared distances ``[C, n, m]`` of rows ``X [C, n, F]`` (``sq``: their squared norms) to
    centres ``[C, m, F]``, by one batched matmul (cdist's general path is slower here)."""
    return (sq[..., None] - 2 * X @ cent.transpose(1, 2) + cent.square().sum(-1)[:, None, :]).clamp_min(0)


def _assign(X: torch.Tensor, valid: torch.Tensor, cent: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    """One-hot nearest-centre assignment ``[C, n, m]`` of the valid rows (zeros elsewhere)."""
    d = _sq_dist(X, sq, cent)
    return F.one_hot(d.argmin(-1), cent.shape[1]).to(X.dtype) * valid[..., None].to(X.dtype)


def _forgy(X: torch.Tensor, valid: torch.Tensor, m: int, gen: torch.Generator) -> torch.Tensor:
    """m distinct random rows of each class as its first centres, batched: ``[C, m, F]``
    (k-means++ seeding measured no better after the Lloyd iterations, at several times the
    cost: its m sequential distance passes)."""
    keys = torch.rand(valid.shape, generator=gen) + (~valid).to(X.dtype) * 2   # padding rows sort last
    pick = keys.argsort(-1)[:, :m]                                              # a short class repeats rows
    return torch.gather(X, 1, pick[..., None].expand(-1, -1, X.shape[-1]))


def summarize(x: torch.Tensor, y: torch.Tensor, n_classes: int, points: int = 1) -> torch.Tensor:
    """A task's condition from its training rows: the class means ``[C, F]`` for
    ``points=1``, else the coreset ``[C, points, F + 1]``."""
    if check_points(points) == 1:
        return class_means(x, y, n_classes)
    return coreset(x, y, n_classes, points)


# --------------------------------------------------------------------------- reading a condition
def split(cond: torch.Tensor, n_classes: int, n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(points [..., C, m, F], share [..., C, m])`` of either form (the means form is
    m = 1 with share 1), or a one-line LohpError naming the shapes."""
    if cond.dim() >= 2 and cond.shape[-2:] == (n_classes, n_features):
        return cond[..., None, :], torch.ones(cond.shape[:-1] + (1,), dtype=cond.dtype, device=cond.device)
    if cond.dim() >= 3 and cond.shape[-3] == n_classes and cond.shape[-1] == n_features + 1:
        return cond[..., :n_features], cond[..., n_features]
    raise LohpError(f"task condition has shape {list(cond.shape)} but the policy was trained for {n_classes} "
                    f"classes x {n_features} features (class means [C, F] or a coreset [C, m, F + 1]); "
                    "use a task of that shape")


def weighted_means(cond: torch.Tensor, n_classes: int, n_features: int) -> torch.Tensor:
    """The per-class means ``[..., C, F]`` a condition carries: itself for the means form,
    the share-weighted mean of the points for a coreset (the class mean up to rounding)."""
    if cond.shape[-2:] == (n_classes, n_features):
        return cond
    pts, share = split(cond, n_classes, n_features)
    return (pts * share[..., None]).sum(-2)
