"""The Lo-Hp policy: U-Net backbone, forward/backward Gaussian heads, flow coefficients."""

# The built-in structures register themselves on import (the class-row one in structure.py).
import lohp.policy.lora_structure  # noqa: F401
import lohp.policy.mlp_structure  # noqa: F401
from lohp.policy.flows import LogZ
from lohp.policy.heads import GaussianHead
from lohp.policy.policy import BACKWARD_KINDS, LohpPolicy, PolicyConfig, gaussian_log_prob
from lohp.policy.structure import ClassRowStructure, make_structure
from lohp.policy.unet import UNet1d

__all__ = ["BACKWARD_KINDS", "ClassRowStructure", "GaussianHead", "LogZ", "LohpPolicy", "PolicyConfig", "UNet1d",
           "gaussian_log_prob", "make_structure"]
