"""Distillation methods, one file each, registered by their ``--distill`` name.

The criterion and helper-module classes keep the names of RepDistiller, SimKD, distillers and
ITRD, so a script ported from those code bases changes only its import line.
"""

import importlib
import pkgutil

from distiller_zoo import kd
from distiller_zoo.ab import ABLoss, Connector
from distiller_zoo.at import Attention
from distiller_zoo.base import Distiller, InitStage, Outputs, Weights
from distiller_zoo.cc import Correlation
from distiller_zoo.common import ConvReg, DistillKL, DistillKL_logit_stand, Embed, LinearEmbed, normalize
from distiller_zoo.crd import CRDLoss
from distiller_zoo.ctkd import CosineDecay, Global_T, GradientReversal
from distiller_zoo.dcd import DCDLoss
from distiller_zoo.dist import DIST
from distiller_zoo.dkd import DKDLoss, dkd_loss
from distiller_zoo.ega import EGA
from distiller_zoo.fitnet import HintLoss
from distiller_zoo.fsp import FSP
from distiller_zoo.ft import FactorTransfer, Paraphraser, Translator
from distiller_zoo.itrd import ITLoss
from distiller_zoo.kd import kd_loss
from distiller_zoo.kdsvd import KDSVD
from distiller_zoo.mlkd import bc_loss, cc_loss, mlkd_loss
from distiller_zoo.nkd import NKDLoss
from distiller_zoo.nst import NSTLoss
from distiller_zoo.ofd import ConnectorConvBN, distillation_loss, feat_loss, get_margin_from_BN
from distiller_zoo.pkt import PKT
from distiller_zoo.registry import DISTILLERS, build, canonical_name, get
from distiller_zoo.reviewkd import ABF, hcl_loss
from distiller_zoo.rkd import RKDLoss
from distiller_zoo.rrd import RRDLoss
from distiller_zoo.semckd import SelfA, SemCKDLoss
from distiller_zoo.simkd import SimKD
from distiller_zoo.sp import Similarity
from distiller_zoo.srrl import SRRL
from distiller_zoo.vid import VIDLoss
from distiller_zoo.wsld import WSLDLoss, cross_entropy_with_label_smoothing

# A method file dropped into this folder registers itself even before it is re-exported above.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ABF", "DIST", "DISTILLERS", "EGA", "FSP", "KDSVD", "PKT", "SRRL", "ABLoss", "Attention", "CRDLoss", "Connector",
    "ConnectorConvBN", "ConvReg", "Correlation", "CosineDecay", "DCDLoss", "DKDLoss", "DistillKL",
    "DistillKL_logit_stand", "Distiller", "Embed", "FactorTransfer", "Global_T", "GradientReversal", "HintLoss",
    "ITLoss", "InitStage", "LinearEmbed", "NKDLoss", "NSTLoss", "Outputs", "Paraphraser", "RKDLoss", "RRDLoss", "SelfA",
    "SemCKDLoss", "SimKD", "Similarity", "Translator", "VIDLoss", "WSLDLoss", "Weights", "bc_loss", "build",
    "canonical_name", "cc_loss", "cross_entropy_with_label_smoothing", "distillation_loss", "dkd_loss", "feat_loss",
    "get", "get_margin_from_BN", "hcl_loss", "kd", "kd_loss", "mlkd_loss", "normalize",
]
