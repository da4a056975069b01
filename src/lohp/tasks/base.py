"""Task and TaskFamily: the unit everything in lohp is built around.

A :class:`Task` is a training split (the only thing a policy may look at), an evaluation
split, a loss, a metric, a target model and the patterns naming its generated subset. A
:class:`TaskFamily` deterministically builds tasks from a seed, from disjoint *source*
and *held-out* sets (the learned_optimization Task/TaskFamily pattern).

Writing a family: one file, one ``Options`` dataclass, one registration. The options are
declared once, with their defaults and one line of help each; the family's constructor
takes them as keyword arguments, ``config()`` (what stores and policies record) is derived
from them, and an unknown option is refused in one line that names the known ones::

    from dataclasses import dataclass

    from lohp.config import Config, setting
    from lohp.errors import LohpError
    from lohp.tasks import Task, TaskFamily, register_family

    @dataclass
    class MyOptions(Config):
        n_way: int = setting(5, "Classes per task.")
        split_seed: int = setting(0, "Seed of the fixed source / held-out split.")

        def __post_init__(self):  # checks of the values alone (they run again on replace())
            if self.n_way < 2:
                raise LohpError(f"n_way must be >= 2 (got {self.n_way})")

    class MyFamily(TaskFamily):
        name = "mine"
        Options = MyOptions

        def __init__(self, **options):
            super().__init__(**options)  # self.options; self.n_way reads self.options.n_way
            ...                          # load the data, split it once (checks that need the data)

        def sample(self, seed: int, split: str = "source") -> Task:
            ...

    register_family("mine", MyFamily)

A family that needs no options, or builds its config another way, declares no ``Options``
and overrides :meth:`TaskFamily.config` instead.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from lohp.condition import check_points, class_means, summarize  # noqa: F401 (class_means re-exported)
from lohp.config import Config, config_from_dict
from lohp.errors import LohpError
from lohp.layout import ParamLayout

SPLITS = ("source", "heldout")


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross entropy: logits [..., n, C], y [..., n] -> [..., n]."""
    return -logits.log_softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example 0/1 correctness: logits [..., n, C], y [..., n] -> [..., n]."""
    return (logits.argmax(-1) == y).to(logits.dtype)


@dataclass
class Task:
    """One task: data splits, target model, generated subset, loss and metric."""

    family: str
    seed: int
    split: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    n_classes: int
    model_factory: Callable[[], nn.Module]
    patterns: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy
    metric_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = accuracy
    metric_name: str = "accuracy"
    # c = condition_fn(task) when set (e.g. text tasks: class means of frozen embeddings of
    # the token ids); otherwise the class means of x_train.
    condition_fn: Callable[["Task"], torch.Tensor] | None = None
    # The rows a coreset condition summarises, (features [n, F], labels [n]), when they are
    # not x_train (e.g. text tasks: the frozen embeddings of the training texts).
    condition_features: Callable[["Task"], tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def name(self) -> str:
        return f"{self.family}/{self.split}/{self.seed}"

    def model(self) -> nn.Module:
        """The target model; its frozen part (outside the generated subset) is the same on every
        call (built under a fixed seed, leaving the global RNG alone)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return self.model_factory()

    @cached_property
    def layout(self) -> ParamLayout:
        return ParamLayout.from_module(self.model(), self.patterns)

    def condition(self, points: int = 1) -> torch.Tensor:
        """The task condition c = g(task) from the training split only (:mod:`lohp.condition`).

        ``points=1``: per-class mean input features in label order, ``[n_classes, F]``, so a
        policy can pair each output class with its own row; ``points=m > 1``: a coreset of
        m weighted points per class, ``[n_classes, m, F + 1]``.
        """
        if check_points(points) == 1 and self.condition_fn is not None:
            return self.condition_fn(self)
        x, y = self.condition_rows()
        return summarize(x, y, self.n_classes, points)

    def condition_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training rows a condition summarises: (features [n, F], labels [n])."""
        if self.condition_features is not None:
            return self.condition_features(self)
        if self.condition_fn is not None:
            raise LohpError(f"the {self.family} family gives its tasks a condition of class means only; a coreset "
                            "condition needs its training features (set Task.condition_features), or use "
                            "condition points 1")
        return self.x_train.reshape(len(self.x_train), -1), self.y_train

    def init_theta(self, seed: int, scheme: str = "standard", sigma: float = 0.01) -> torch.Tensor:
        """theta_0: the layer's standard init under ``seed``, or N(0, sigma^2)."""
        layout = self.layout
        g = torch.Generator().manual_seed(int(seed))
        if scheme == "normal":
            return torch.randn(layout.size, generator=g, dtype=layout.dtype) * sigma
        if scheme == "zeros":
            return torch.zeros(layout.size, dtype=layout.dtype)
        if scheme == "standard":
            state = torch.random.get_rng_state()
            try:
                torch.manual_seed(int(seed))
                return layout.flatten(self.model_factory())
            finally:
                torch.random.set_rng_state(state)
        raise LohpError(f"unknown init scheme {scheme!r}; choose one of standard, normal, zeros")

    def evaluate(self, theta: torch.Tensor, split: str = "eval") -> dict[str, float]:
        """Loss and metric of one weight vector on the eval (or train) split."""
        x, y = (self.x_eval, self.y_eval) if split == "eval" else (self.x_train, self.y_train)
        with torch.no_grad():
            logits = self.layout.functional(self.model())(theta, x)
            return {"loss": self.loss_fn(logits, y).mean().item(),
                    self.metric_name: self.metric_fn(logits, y).mean().item()}


HEAD_KINDS = ("linear", "mlp")


def make_feature_spec(n_features: int, hidden: int, patterns: Sequence[str], input: str,
                      shift: float | Sequence[float] = 0.0, scale: float | Sequence[float] = 1.0) -> dict[str, Any]:
    """A family's :meth:`TaskFamily.feature_spec`: task inputs are ``(raw - shift) / scale``
    (numbers, or one per feature) of raw rows of ``n_features`` values (``input`` says what a
    raw row is, for a person); the target is a linear head (``hidden == 0``) or a
    one-hidden-layer ReLU MLP of width ``hidden`` (:func:`feature_head`), ``patterns`` its
    generated subset."""

    def numbers(v: float | Sequence[float]) -> float | list[float]:
        if isinstance(v, (int, float)):
            return float(v)
        out = [float(x) for x in v]
        if len(out) != n_features:
            raise ValueError(f"shift / scale have {len(out)} values for {n_features} features")
        return out

    head = {"kind": "linear"} if not hidden else {"kind": "mlp", "hidden": int(hidden)}
    return {"n_features": int(n_features), "shift": numbers(shift), "scale": numbers(scale), "input": str(input),
            "head": head, "patterns": [str(p) for p in patterns]}


def feature_head(spec: dict[str, Any], n_classes: int) -> nn.Module:
    """The target model a :func:`make_feature_spec` names, for ``n_classes`` classes: the
    module every built-in feature family builds (``nn.Linear``, or ``nn.Sequential`` of
    Linear, ReLU, Linear), so parameter names and layouts agree."""
    head, f = spec["head"], int(spec["n_features"])
    if head.get("kind") == "linear":
        return nn.Linear(f, n_classes)
    if head.get("kind") == "mlp":
        h = int(head["hidden"])
        return nn.Sequential(nn.Linear(f, h), nn.ReLU(), nn.Linear(h, n_classes))
    raise LohpError(f"unknown head {head.get('kind')!r} in the feature spec; choose one of {', '.join(HEAD_KINDS)}")


def relabelled_splits(x: torch.Tensor, classes: Sequence[int], train_idx: dict[int, Any], eval_idx: dict[int, Any]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_eval, y_eval) of a task whose label l is class ``classes[l]``:
    each class's rows of its fixed training and evaluation pools (row indices into ``x``)."""
    xs: dict[str, list[torch.Tensor]] = {"train": [], "eval": []}
    ys: dict[str, list[torch.Tensor]] = {"train": [], "eval": []}
    for label, c in enumerate(classes):
        for part, idx in (("train", train_idx[c]), ("eval", eval_idx[c])):
            xs[part].append(x[idx])
            ys[part].append(torch.full((len(idx),), label, dtype=torch.long))
    return torch.cat(xs["train"]), torch.cat(ys["train"]), torch.cat(xs["eval"]), torch.cat(ys["eval"])


def as_type(value: Any, to: Callable[[Any], Any], name: str, what: str = "") -> Any:
    """``to(value)`` (e.g. ``int("3")``), or a one-line LohpError naming the option."""
    try:
        return to(value)
    except (TypeError, ValueError):
        kind = "an integer" if to is int else "a number" if to is float else getattr(to, "__name__", repr(to))
        raise LohpError(f"{what + ': ' if what else ''}{name} must be {kind} (got {value!r})") from None


def build_options(cls: type, given: dict[str, Any], family: str) -> Any:
    """The ``cls`` (an Options dataclass) of ``given``: unknown or missing options refused in
    one line that names the known ones."""
    fields = dataclasses.fields(cls)
    known = ", ".join(sorted(f.name for f in fields))
    missing = [f.name for f in fields if f.name not in given
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise LohpError(f"the {family} family needs the option(s) {', '.join(missing)} (e.g. --family-option "
                        f"{missing[0]}=...); known: {known}")
    return config_from_dict(cls, given, f"{family} family")


def jsonable(value: Any) -> Any:
    """Tuples as lists, recursively (what a JSON round trip gives back)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


class TaskFamily(abc.ABC):
    """Builds tasks deterministically from (seed, split).

    Subclasses implement :meth:`sample` and declare their options as ``Options``, a
    :class:`lohp.config.Config` dataclass (see the module docstring): ``__init__(**options)``
    validates them into ``self.options`` (readable as attributes too: ``self.n_way``) and
    :meth:`config` is ``self.options`` as JSON. A family without ``Options`` overrides
    :meth:`config` itself. The optional hooks below have defaults that suit a small classifier
    family, and a family overrides only what it needs. Register a family with
    :func:`lohp.tasks.register_family` (or a ``lohp.families`` entry point) and check it with
    :func:`lohp.testing.check_family`.
    """

    name: str = "family"
    #: The family's options (a lohp.config.Config dataclass); None: the family overrides config().
    Options: ClassVar[type[Config] | None] = None
    #: Optimizer hyper-parameters that replace lohp's defaults for this family in Stage I,
    #: e.g. ``{"adam": {"lr": 5e-3}}`` (read-only; a user's ``--lr`` still wins).
    optimizer_defaults: dict[str, dict[str, Any]] = {}
    #: Runs per Stage I shard: the unit of resume (slow targets want small shards).
    default_shard_runs: int = 64

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.Options is not None:
            hidden = [f.name for f in dataclasses.fields(cls.Options) if hasattr(cls, f.name)]
            if hidden:  # self.<option> would read the class attribute, not the option
                raise TypeError(f"{cls.__name__}: option(s) {', '.join(hidden)} of {cls.Options.__name__} share "
                                "their name with an attribute of the family class; rename one of them")

    def __init__(self, **options: Any) -> None:
        """Validate ``options`` into ``self.options`` (an instance of ``Options``)."""
        if self.Options is None:
            if options:
                raise LohpError(f"task family {self.name!r} takes no options (got {', '.join(sorted(options))})")
            return
        self.options = build_options(self.Options, options, self.name)

    def __getattr__(self, name: str) -> Any:
        # Only reached when ordinary lookup fails: an option read as an attribute.
        options = self.__dict__.get("options")
        if options is not None and not name.startswith("__") \
                and any(f.name == name for f in dataclasses.fields(options)):
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def check_policy(self, trained_config: dict[str, Any]) -> None:
        """Refuse (LohpError) to serve a policy trained on a family config this family
        cannot use; ``trained_config`` is the family config stored with the policy."""

    def feature_spec(self) -> dict[str, Any] | None:
        """How a row of raw features becomes one of this family's task inputs, for families
        whose tasks are feature vectors with a generated head (what
        :class:`lohp.sklearn.GeneratedClassifier` serves); see :func:`make_feature_spec`.
        Every policy records it (``policy.json``, key ``feature_spec``), so the estimator
        applies the family's preprocessing (e.g. the ``table`` family's standardisation
        with source-class statistics) without the family's data. None (the default): the
        family's tasks are not feature rows (token ids, a LoRA target, ...)."""
        return None

    @abc.abstractmethod
    def sample(self, seed: int, split: str = "source") -> Task:
        """The task with this seed from the source or held-out set."""

    def config(self) -> dict[str, Any]:
        """JSON-able arguments that rebuild this family (stored in manifests): the options."""
        options = self.__dict__.get("options")
        if options is None:
            raise NotImplementedError(f"{type(self).__name__} declares no Options dataclass (or did not call "
                                      "TaskFamily.__init__); declare one or override config()")
        return jsonable(options.to_dict())

    def source_tasks(self, n: int, start: int = 0) -> list[Task]:
        return [self.sample(s, "source") for s in range(start, start + n)]

    def heldout_tasks(self, n: int, start: int = 0) -> list[Task]:
        return [self.sample(s, "heldout") for s in range(start, start + n)]

    @staticmethod
    def check_split(split: str) -> None:
        if split not in SPLITS:
            raise LohpError(f"unknown task split {split!r}; choose one of {', '.join(SPLITS)}")


@dataclass
class TaskBatch:
    """R tasks of one family stacked (padded) so R runs can train in one batched pass.

    Training and evaluation sets differ in size between tasks; they are padded to the
    largest and carry their true sizes so minibatches and means ignore the padding.
    """

    x_train: torch.Tensor  # [R, n_max, ...]
    y_train: torch.Tensor  # [R, n_max]
    n_train: torch.Tensor  # [R]
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    n_eval: torch.Tensor

    @classmethod
    def stack(cls, tasks: Sequence[Task]) -> "TaskBatch":
        def pad(xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            n = max(len(x) for x in xs)
            out = xs[0].new_zeros((len(xs), n, *xs[0].shape[1:]))
            for i, x in enumerate(xs):
                out[i, :len(x)] = x
            return out, torch.tensor([len(x) for x in xs])

        xt, nt = pad([t.x_train for t in tasks])
        yt, _ = pad([t.y_train for t in tasks])
        xe, ne = pad([t.x_eval for t in tasks])
        ye, _ = pad([t.y_eval for t in tasks])
        return cls(xt, yt, nt, xe, ye, ne)

    def minibatch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform draws (with replacement) of ``batch_size`` examples per task."""
        r = len(self.n_train)
        u = torch.rand(r, batch_size, generator=generator)
        idx = (u * self.n_train[:, None]).long()
        rows = torch.arange(r)[:, None]
        return self.x_train[rows, idx], self.y_train[rows, idx]

    def mask(self, split: str) -> torch.Tensor:
        n, size = (self.n_train, self.x_train.shape[1]) if split == "train" else (self.n_eval, self.x_eval.shape[1])
        return (torch.arange(size)[None, :] < n[:, None]).float()
