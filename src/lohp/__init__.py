"""lohp: Lo-Hp, a learned forward-only optimizer that generates task weights."""

from lohp.errors import LohpError
from lohp.layout import ParamLayout

__version__ = "0.1.0"
__all__ = ["LohpError", "ParamLayout", "__version__"]
