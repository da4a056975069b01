"""Methods by name, and :class:`LossConfig`: a method, its compression k and its options.

A method is registered with its loss and the options class that loss owns::

    register_method(Method("lo-hp", OnPolicyStates, {"beta": 0.8}, options=OneStepOptions))

| method          | loss (options)                       | what it is                                     |
|-----------------|--------------------------------------|------------------------------------------------|
| lo-hp           | OnPolicyStates (OneStepOptions)      | hybrid, "on-policy states, off-policy targets": |
|                 |                                      | one-step sub-trajectories from visited and real |
|                 |                                      | states toward the matched checkpoint, by beta   |
| lo-op           | OnPolicyStates (OneStepOptions)      | lo-hp with beta = 0 (on-policy segments only)   |
| lo-hp-v1        | HybridSubTB (SubTBOptions)           | the earlier hybrid: reparameterised on-policy   |
|                 |                                      | SubTB + off-policy maximum likelihood           |
| lo-hp-literal   | HybridSubTB (SubTBOptions)           | docs/method.md, section 'Sub-trajectory         |
|                 |                                      | balance', read literally (learned P_B, ...)     |
| lo-di           | LocalRegression (RegressionOptions)  | regression of real stride-k steps               |
| lo-di-noise     | LocalRegression (RegressionOptions)  | lo-di on noise-perturbed inputs                 |
| hypernetwork    | LocalRegression (RegressionOptions)  | lo-di with k = T                                |

:class:`LossConfig` holds what every method shares (``method``, ``k``) and the method's
options object; it checks ``k``, the options check themselves. The flat form of before
(``LossConfig(method="lo-hp", beta=0.5)``, ``loss_config("lo-hp", beta=0.5)``, ``--beta``,
the ``loss_config`` of a ``policy.json``) is read in one place, :func:`_options_from_flat`,
which looks the method's options class up by name. ``backward`` (the P_B kind) is the
policy's setting (``PolicyConfig.backward``): the losses read it from the policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable

from lohp.config import Config, setting
from lohp.errors import LohpError
from lohp.losses.base import LossOptions, check_beta, check_choice, check_flatness
from lohp.losses.hybrid import HybridSubTB, SubTBOptions, check_subtb, check_subtb_mix
from lohp.losses.lodi import LocalRegression, RegressionOptions
from lohp.losses.onestep import OneStepOptions, OnPolicyStates, check_entropy, check_start_widths

FORMULATIONS = ("states", "subtb")


@dataclass
class FlatOptions(OneStepOptions, SubTBOptions, RegressionOptions):
    """Every built-in option in one set: the options of a method registered without an
    options class of its own (as every method was before options were per method), so such
    a registration, and its loss reading ``config.beta``, keeps working."""

    formulation: str = setting(  # type: ignore[assignment]
        "states", "The method's formulation, fixed by the method (states: lo-hp, lo-op; subtb: lo-hp-v1, "
                  "lo-hp-literal); another value is refused.")
    scope = {}

    def __post_init__(self) -> None:
        check_choice("formulation", self.formulation, FORMULATIONS)
        check_beta(self.beta)
        check_flatness(self)
        check_entropy(self)
        check_subtb(self)
        check_start_widths(self)
        if self.formulation == "subtb":
            check_subtb_mix(self)
            if self.entropy_weight > 0:
                raise LohpError(OneStepOptions.scope["entropy_weight"])


@dataclass(frozen=True)
class Method:
    """A Stage II method: its name, the loss it trains with (``loss(config) -> callable``
    returning ``(loss, diagnostics)``, given the run's :class:`LossConfig`), its preset over
    its options, the options class its loss owns, the policy settings it needs unless the
    run gives them (lo-hp-literal: a learned P_B), and whether it learns one step over the
    whole trajectory (the hypernetwork: k = T)."""

    name: str
    loss: Callable[["LossConfig"], Any]
    preset: dict[str, Any] = field(default_factory=dict)
    whole_trajectory: bool = False
    regression: bool = False        # off-policy regression only (no on-policy rollouts); informative
    options: type[LossOptions] = FlatOptions
    policy_preset: dict[str, Any] = field(default_factory=dict)


_METHODS: dict[str, Method] = {}


def register_method(method: Method, overwrite: bool = False) -> None:
    """Make ``method.name`` usable everywhere (``lohp train --method``, presets, saved
    policies record it by name). Its preset is checked against its options here."""
    if method.name in _METHODS and _METHODS[method.name] is not method and not overwrite:
        raise LohpError(f"a method named {method.name!r} is already registered; pick another name")
    if not (isinstance(method.options, type) and issubclass(method.options, LossOptions)):
        raise LohpError(f"method {method.name!r}: options must be a LossOptions subclass (got {method.options!r})")
    _options_from_flat(method, dict(method.preset), strict=True)
    _METHODS[method.name] = method


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise LohpError(f"unknown method {name!r}; choose one of {', '.join(_METHODS)}")
    return _METHODS[name]


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


def _takers(key: str) -> list[str]:
    return [m.name for m in _METHODS.values() if m.options is not FlatOptions
            and key in {f.name for f in fields(m.options)}]


def _options_from_flat(method: Method, flat: dict[str, Any], strict: bool) -> LossOptions:
    """``method``'s options from the flat keys of before: the one translation of the flat
    form. ``formulation`` must be the method's own (it is the method's now); ``backward`` is
    the policy's setting. ``strict`` (a caller's options) refuses a key the method does not
    have; otherwise (a ``policy.json`` record) such keys are dropped: the method's loss
    never read them."""
    cls = method.options
    names = {f.name for f in fields(cls)}
    kept, unknown = {}, []
    for key, value in flat.items():
        if key in names:
            kept[key] = value
        elif key == "formulation":
            own = cls.formulation
            if value != own and (own is not None or value not in FORMULATIONS):
                raise LohpError(f"formulation {value!r} is not {method.name}'s ({own or 'none'}); the formulation "
                                "is the method's: lo-hp, lo-op are states, lo-hp-v1, lo-hp-literal subtb")
        elif key == "backward":
            if strict:
                raise LohpError("backward is a policy setting (PolicyConfig.backward: lohp train --backward, "
                                "policy_options={'backward': ...}); the loss reads the policy's P_B")
        elif strict:
            if any(key in {f.name for f in fields(m.options)} for m in _METHODS.values()):
                why = next((m.options.scope[key] for m in _METHODS.values() if key in m.options.scope), None)
                raise LohpError(f"{method.name} has no loss option {key}: "
                                + (why or f"{', '.join(_takers(key))} take it"))
            unknown.append(key)
    if unknown:
        raise LohpError(f"unknown loss setting(s) {', '.join(sorted(unknown))}; known: "
                        f"{', '.join(sorted({'method', 'k', *names}))}")
    return cls(**kept)


@dataclass(init=False)
class LossConfig(Config):
    """A run's loss: the method, the compression k and the method's options.

    ``LossConfig("lo-hp", 2, OneStepOptions(beta=0.5))`` is checked without the registry;
    the flat form ``LossConfig(method="lo-hp", k=2, beta=0.5)`` (as before) builds the
    method's options (no preset: :func:`loss_config` applies it) by the method's name, and
    refuses a name that is not registered. Options read through as attributes
    (``config.beta``); ``to_dict`` is the flat form (method, k, options)."""

    what = "loss"

    method: str = setting("lo-hp", "Stage II method (lohp.losses.method_names(): lo-hp, lo-op, lo-hp-v1, "
                                   "lo-hp-literal, lo-di, lo-di-noise, hypernetwork, and registered ones).")
    k: int = setting(2, "Compression factor: online step j <-> offline step k*j, N = T/k policy steps.")
    options: LossOptions = setting(None, "The method's options (its Method.options class).", cli=False)

    def __init__(self, method: str = "lo-hp", k: int = 2, options: LossOptions | None = None, **flat: Any):
        if options is not None and flat:
            raise LohpError(f"give the loss options either as options= or by name, not both ({', '.join(flat)})")
        self.method, self.k = method, k
        self.options = options if options is not None else _options_from_flat(get_method(method), flat, strict=True)
        self.__post_init__()

    def __post_init__(self) -> None:
        if self.k < 1:
            raise LohpError(f"k must be >= 1 (got {self.k})")
        if not isinstance(self.options, LossOptions) or isinstance(self.options, LossConfig):
            raise LohpError(f"loss options must be a LossOptions object (got {type(self.options).__name__})")

    def __getattr__(self, name: str) -> Any:  # only for names that are not attributes: the options'
        options = self.__dict__.get("options")
        if options is not None and (name in {f.name for f in fields(options)} or name == "formulation"):
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LossConfig":
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "k": self.k, **self.options.to_dict()}

    def replace(self, **changes: Any) -> "LossConfig":
        method, k = changes.pop("method", self.method), changes.pop("k", self.k)
        if "options" in changes:
            return LossConfig(method, k, **changes)
        kept = self.options.to_dict() if method == self.method else {}
        return LossConfig(method, k, **{**kept, **changes})

    def record(self, backward: str) -> dict[str, Any]:
        """The ``loss_config`` of a ``policy.json``: the flat form, with the P_B kind the loss
        read from the policy (``backward``), the layout policy folders have always had."""
        return {**self.to_dict(), "backward": backward}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "LossConfig":
        """The loss config a ``policy.json``'s ``loss_config`` describes, written by this
        build or before options were per method (every option of every formulation, and
        ``backward``): the options the method does not have are dropped (its loss never
        read them), missing ones take their defaults."""
        rest = dict(record)
        method, k = rest.pop("method", "lo-hp"), rest.pop("k", 2)
        return cls(method, k, _options_from_flat(get_method(method), rest, strict=False))


def loss_config(method: str, **overrides: Any) -> LossConfig:
    """``method``'s loss config: its preset, then ``overrides`` (``k`` and its options by
    name; a None override is left out)."""
    m = get_method(method)
    given = {key: v for key, v in overrides.items() if v is not None}
    k = given.pop("k", 2)
    return LossConfig(method, k, _options_from_flat(m, {**m.preset, **given}, strict=True))


def make_loss(config: LossConfig) -> Any:
    m = get_method(config.method)
    if not isinstance(config.options, m.options):
        raise LohpError(f"method {m.name} takes {m.options.__name__} (got {type(config.options).__name__})")
    return m.loss(config)


BUILTIN = (
    # beta 0.8: at 0.5 the on-policy slots (far from the trajectory early in training) slowed
    # whole-network policies down; 0.8 kept the robustness and learned as fast as lo-di.
    Method("lo-hp", OnPolicyStates, {"beta": 0.8}, options=OneStepOptions),
    Method("lo-op", OnPolicyStates, {"beta": 0.0}, options=OneStepOptions),
    Method("lo-hp-v1", HybridSubTB, {}, options=SubTBOptions),
    Method("lo-hp-literal", HybridSubTB, {"rollout": "detached", "log_z": "learned", "off_policy": "subtb",
                                          "normalize": False}, options=SubTBOptions,
           policy_preset={"backward": "learned"}),
    Method("lo-di", LocalRegression, {}, regression=True, options=RegressionOptions),
    Method("lo-di-noise", LocalRegression, {"input_noise": 5.0}, regression=True, options=RegressionOptions),
    Method("hypernetwork", LocalRegression, {}, whole_trajectory=True, regression=True, options=RegressionOptions),
)
for _method in BUILTIN:
    register_method(_method)
PRESETS: dict[str, dict[str, Any]] = {m.name: dict(m.preset) for m in BUILTIN}
METHODS = tuple(PRESETS)  # the built-in methods; method_names() is the live list
