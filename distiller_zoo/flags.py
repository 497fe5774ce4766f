"""Flags that several methods read, declared once so that every method declares them alike."""

from dataset.contrast import CONTRAST_MODES
from distiller_zoo.base import argument

FEAT_DIM = argument("--feat_dim", type=int, default=128, help="embedding dimension (CC, CRD, RRD, DCD)")
NCE_K = argument("--nce_k", type=int, default=16384, help="negatives per sample / queue length (CRD, RRD)")
NCE_T = argument("--nce_t", type=float, default=0.07, help="CRD temperature")
NCE_M = argument("--nce_m", type=float, default=0.5, help="CRD memory momentum")
MODE = argument("--mode", default="exact", choices=CONTRAST_MODES,
                help="CRD positive: the sample itself (exact) or a random same-class sample (relax)")
INIT_EPOCHS = argument("--init_epochs", type=int, default=30,
                       help="pre-training epochs of the two-stage methods (AB, FT, FSP)")
LOGIT_STAND = argument("--logit_stand", action="store_true", default=False,
                      help="logit standardisation (Sun et al. 2024): z-score the logits before softening "
                           "(KD, DKD, MLKD, CTKD, DIST)")
