"""A scikit-learn estimator for policies that generate heads on features.

    from lohp.sklearn import GeneratedClassifier
    clf = GeneratedClassifier("runs/my-policy").fit(X, y)   # generates the head: no gradient
    clf.predict(X_new), clf.predict_proba(X_new), clf.score(X_test, y_test)

``fit(X, y)`` makes one task of ``X, y`` (its training split), computes the policy's
condition from it and generates the head with the policy; nothing is trained. The policy's
family must take rows of features (``table``, ``digits``, ``image-folder``, ``text-table``
without LoRA, ``openclipart``, ``fashion``, the rotated families): ``X`` holds the *raw*
rows, and the preprocessing the family applied while the policy learned (the ``table``
family's standardisation with source-class statistics, digits' division by 16, ...) is
applied for you, from the ``feature_spec`` the policy recorded in ``policy.json`` (a policy
saved before lohp recorded it rebuilds its family to recover it, which needs the family's
data). Labels may be anything ``numpy.unique`` sorts: ``classes_[i]`` is the policy's class
index ``i``. A feature width or a class count the policy cannot serve is refused in one
line (:class:`EstimatorError`, a ``LohpError`` and a ``ValueError``).

It follows scikit-learn's estimator conventions: the constructor stores its parameters
unchanged (``get_params`` / ``set_params``, ``clone``), a fitted estimator has ``classes_``
and ``n_features_in_`` (and ``feature_names_in_`` for a DataFrame), and predicting before
``fit`` raises ``NotFittedError``. A fitted estimator holds plain arrays only (the generated
weights), so it pickles without the policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from lohp.errors import LohpError
from lohp.generation import Generator
from lohp.tasks import Task, family_feature_spec, feature_head

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # older scikit-learn: the estimator's own method
    def _validate_data(estimator: Any, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


_DTYPES = (np.float64, np.float32)


class EstimatorError(LohpError, ValueError):
    """A refusal of :class:`GeneratedClassifier` (one line): a ``LohpError`` for lohp's
    callers, a ``ValueError`` for scikit-learn's."""


def preprocess(X: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Raw rows ``X [n, F]`` as the policy's family fed them to its tasks: ``(X - shift) / scale``
    (float32), with the ``shift`` and ``scale`` of the recorded feature spec."""
    shift = np.asarray(spec.get("shift", 0.0), dtype=np.float64)
    scale = np.asarray(spec.get("scale", 1.0), dtype=np.float64)
    return np.ascontiguousarray((np.asarray(X, dtype=np.float64) - shift) / scale, dtype=np.float32)


class GeneratedClassifier(ClassifierMixin, BaseEstimator):
    """A classifier whose head a lohp policy generates from the training data, with no gradient.

    Parameters
    ----------
    policy : str, Path or lohp.generation.Generator
        A policy folder (``lohp train --out``) or a loaded generator.
    seed : int
        Seed of the starting weights s_0 the policy steps from (as ``lohp generate --seed``).
    device : str
        torch device of the generation.
    family_options : dict or None
        Only for policies saved before lohp recorded their family's input preprocessing:
        family options (e.g. ``{"path": "data.csv"}``) that rebuild the family to recover it.

    Attributes
    ----------
    classes_ : ndarray
        The labels seen in ``fit``, sorted; ``classes_[i]`` is the policy's class ``i``.
    n_features_in_ : int
        Features per row (the policy's input width).
    weights_ : dict of str to ndarray
        The generated tensors (the policy's generated subset), by parameter name.
    theta_ : ndarray
        The same weights as one flat vector (the layout order).
    feature_spec_ : dict
        The family's input preprocessing and head (``policy.json``'s ``feature_spec``).
    method_ : str
        The policy's method.
    """

    def __init__(self, policy: Any, *, seed: int = 0, device: str = "cpu", family_options: dict | None = None):
        self.policy = policy
        self.seed = seed
        self.device = device
        self.family_options = family_options

    # -- fit ------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> "GeneratedClassifier":
        """Generate the head for the task ``(X, y)``: its condition, then the policy's N steps."""
        self._forget()
        try:
            return self._fit(X, y)
        except BaseException:
            self._forget()  # a refused fit leaves no half-fitted estimator behind
            raise

    def _fit(self, X: Any, y: Any) -> "GeneratedClassifier":
        X, y = _validate_data(self, X, y, dtype=_DTYPES)
        check_classification_targets(y)
        classes, y_index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise EstimatorError(f"GeneratedClassifier needs at least 2 classes in y (got 1 class, "
                                 f"{classes.tolist()[0]!r}): a generated head separates classes")
        gen = self._generator()
        spec = self._feature_spec(gen)
        width = int(spec["n_features"])
        if X.shape[1] != width:
            raise EstimatorError(f"X has {X.shape[1]} feature(s) per row, but the policy generates heads on {width} "
                                 f"({spec.get('input', 'its family features')}); pass rows of those {width} features")
        x = torch.from_numpy(preprocess(X, spec))
        yt = torch.from_numpy(np.asarray(y_index, dtype=np.int64).reshape(-1))
        n_classes = len(classes)
        task = Task(family=str(gen.meta.get("family")), seed=int(self.seed), split="fit", x_train=x, y_train=yt,
                    x_eval=x, y_eval=yt, n_classes=n_classes, model_factory=lambda: feature_head(spec, n_classes),
                    patterns=tuple(spec["patterns"]), info={"classes": classes.tolist()})
        try:
            gen.check_task(task)
        except LohpError as exc:
            raise EstimatorError(f"the policy cannot serve {n_classes} classes on {width} features: {exc}") from None
        weights = gen.generate(task, seed=int(self.seed))
        model = task.layout.load_into(task.model(), weights.theta.clone())
        self.classes_ = classes
        self.feature_spec_ = spec
        self.method_ = str(gen.meta.get("method"))
        self.theta_ = weights.theta.detach().cpu().numpy().copy()
        self.weights_ = {k: v.detach().cpu().numpy().copy() for k, v in weights.named.items()}
        self.model_state_ = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
        return self

    def _forget(self) -> None:
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, name)

    def _generator(self) -> Generator:
        if isinstance(self.policy, Generator):
            return self.policy
        if isinstance(self.policy, (str, Path)):
            return Generator.load(self.policy, self.device, backend="eager")  # one generation: no trace
        raise EstimatorError(f"policy must be a policy folder (lohp train --out) or a lohp Generator, "
                             f"got {type(self.policy).__name__}")

    def _feature_spec(self, gen: Generator) -> dict[str, Any]:
        spec = gen.meta.get("feature_spec")
        if spec is not None:
            return spec
        family = gen.meta.get("family")
        try:  # a policy saved before feature specs were recorded: rebuild its family
            spec = family_feature_spec(family, {**(gen.meta.get("family_config") or {}),
                                                **(self.family_options or {})})
        except LohpError as exc:
            raise EstimatorError(f"this policy was saved before lohp recorded its family's input preprocessing, and "
                                 f"the family cannot be rebuilt to recover it ({exc}); pass family_options (e.g. "
                                 "{'path': 'data.csv'}) or retrain the policy") from None
        if spec is None:
            raise EstimatorError(f"the policy's family {family!r} does not take rows of features (its tasks are token "
                                 "ids, a LoRA target or another model); GeneratedClassifier serves policies of feature "
                                 "families such as table, digits or image-folder")
        return spec

    # -- predict --------------------------------------------------------------------
    def _logits(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = _validate_data(self, X, dtype=_DTYPES, reset=False)
        model = feature_head(self.feature_spec_, len(self.classes_))
        model.load_state_dict({k: torch.from_numpy(v) for k, v in self.model_state_.items()})
        with torch.no_grad():
            return model.eval()(torch.from_numpy(preprocess(X, self.feature_spec_))).double().numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``[n, len(classes_)]`` (softmax of the head's logits)."""
        logits = self._logits(X)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """The label of the largest logit per row."""
        logits = self._logits(X)  # first: it refuses an unfitted estimator
        return self.classes_[np.argmax(logits, axis=1)]


__all__ = ["EstimatorError", "GeneratedClassifier", "preprocess"]
