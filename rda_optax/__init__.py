"""rda-optax: l1-regularized dual averaging for sparse CNNs, as optax
transformations (He, Jia, Xu, Zhang, Zhao, 2020)."""

from rda_optax._allocation import global_top_k_masks
from rda_optax._allocation import keep_counts
from rda_optax._allocation import sparsity_allocation
from rda_optax._allocation import top_k_mask
from rda_optax._asr import FreezeZerosState
from rda_optax._asr import freeze_zeros
from rda_optax._bn_l1 import add_bn_l1
from rda_optax._export import SparseFormatError
from rda_optax._export import load_sparse
from rda_optax._export import save_sparse
from rda_optax._gmp import GMPState
from rda_optax._gmp import gmp
from rda_optax._grda import GRDAState
from rda_optax._grda import grda
from rda_optax._group import GroupSpec
from rda_optax._group import GROUP_WEIGHTINGS
from rda_optax._group import channel_groups
from rda_optax._group import group_norms
from rda_optax._group import group_sizes
from rda_optax._group import group_soft_threshold
from rda_optax._group import sparse_group_soft_threshold
from rda_optax._init import rescale
from rda_optax._init import scaled_uniform
from rda_optax._masks import default_l1_mask
from rda_optax._prox import Prox
from rda_optax._prox_adam import ProxAdamState
from rda_optax._prox_adam import prox_adam
from rda_optax._prox_sgd import ProxSGDState
from rda_optax._prox_sgd import prox_sgd
from rda_optax._rda import RDAState
from rda_optax._rda import rda
from rda_optax._rigl import RigLState
from rda_optax._rmda import RMDAState
from rda_optax._rmda import rmda
from rda_optax._rigl import rigl
from rda_optax._soft_threshold import soft_threshold
from rda_optax._target import FlopsModel
from rda_optax._units import ChannelUnit
from rda_optax._units import trace_channel_units
from rda_optax._sparsity import LeafSparsity
from rda_optax._sparsity import sparsity
from rda_optax._sparsity import sparsity_report

__version__ = "0.1.0"

__all__ = (
    "ChannelUnit",
    "FlopsModel",
    "FreezeZerosState",
    "GROUP_WEIGHTINGS",
    "GMPState",
    "GRDAState",
    "GroupSpec",
    "LeafSparsity",
    "Prox",
    "ProxAdamState",
    "ProxSGDState",
    "RDAState",
    "RMDAState",
    "RigLState",
    "SparseFormatError",
    "add_bn_l1",
    "channel_groups",
    "default_l1_mask",
    "freeze_zeros",
    "global_top_k_masks",
    "gmp",
    "grda",
    "group_norms",
    "group_sizes",
    "group_soft_threshold",
    "keep_counts",
    "load_sparse",
    "prox_adam",
    "prox_sgd",
    "rda",
    "rescale",
    "rigl",
    "rmda",
    "save_sparse",
    "scaled_uniform",
    "soft_threshold",
    "sparse_group_soft_threshold",
    "sparsity",
    "sparsity_allocation",
    "sparsity_report",
    "top_k_mask",
    "trace_channel_units",
)
