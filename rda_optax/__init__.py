"""rda-optax: l1-regularized dual averaging for sparse CNNs, as optax
transformations (He, Jia, Xu, Zhang, Zhao, 2020)."""

from rda_optax._allocation import global_top_k_masks
from rda_optax._allocation import keep_counts
from rda_optax._allocation import sparsity_allocation
from rda_optax._allocation import top_k_mask
from rda_optax._asr import FreezeZerosState
from rda_optax._asr import freeze_zeros
from rda_optax._gmp import GMPState
from rda_optax._gmp import gmp
from rda_optax._init import rescale
from rda_optax._init import scaled_uniform
from rda_optax._masks import default_l1_mask
from rda_optax._prox_sgd import ProxSGDState
from rda_optax._prox_sgd import prox_sgd
from rda_optax._rda import RDAState
from rda_optax._rda import rda
from rda_optax._rigl import RigLState
from rda_optax._rigl import rigl
from rda_optax._soft_threshold import soft_threshold
from rda_optax._sparsity import LeafSparsity
from rda_optax._sparsity import sparsity
from rda_optax._sparsity import sparsity_report

__version__ = "0.1.0"

__all__ = (
    "FreezeZerosState",
    "GMPState",
    "LeafSparsity",
    "ProxSGDState",
    "RDAState",
    "RigLState",
    "default_l1_mask",
    "freeze_zeros",
    "global_top_k_masks",
    "gmp",
    "keep_counts",
    "prox_sgd",
    "rda",
    "rescale",
    "rigl",
    "scaled_uniform",
    "soft_threshold",
    "sparsity",
    "sparsity_allocation",
    "sparsity_report",
    "top_k_mask",
)
