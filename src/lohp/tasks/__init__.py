"""Task families by name: the built-in ones (each registers itself, at the end of its
module, with the :func:`register_family` call a user makes), yours, and the
``lohp.families`` entry-point group (a package declaring ``[project.entry-points."lohp.families"]
myfam = "mypkg:MyFamily"`` works in every ``lohp`` command of a fresh process)."""

from __future__ import annotations

from lohp.tasks.base import (
    SPLITS,
    Task,
    TaskBatch,
    TaskFamily,
    accuracy,
    class_means,
    cross_entropy,
    feature_head,
    make_feature_spec,
)
from lohp.tasks.digits import DigitsFamily
from lohp.tasks.image_folder import ImageFolderFamily
from lohp.tasks.text_table import TextTableFamily
from lohp.tasks.images import FashionFeatureFamily, OpenclipartFamily, RotatedFashionFamily, RotatedMnistFamily
from lohp.tasks.registry import (
    ENTRY_POINT_GROUP,
    FAMILIES,
    family_factory,
    family_feature_spec,
    family_names,
    family_options,
    make_family,
    register_family,
)
from lohp.tasks.table import TableFamily
from lohp.tasks.text import FortunesFamily, WordNetFamily

__all__ = ["ENTRY_POINT_GROUP", "FAMILIES", "SPLITS", "DigitsFamily", "FashionFeatureFamily", "FortunesFamily",
           "ImageFolderFamily", "OpenclipartFamily", "RotatedFashionFamily", "RotatedMnistFamily", "TableFamily",
           "Task", "TaskBatch", "TaskFamily", "TextTableFamily", "WordNetFamily", "accuracy", "class_means",
           "cross_entropy", "family_factory", "family_feature_spec", "family_names", "family_options", "feature_head",
           "make_family", "make_feature_spec", "register_family"]
