"""hessian-lab: curvature of loss landscapes while networks train.

Operators (the only code that sees models, losses and data) build matrix-free products;
estimators see only a ``matvec`` (or a dense array) and return named results.

Example:
  >>> import jax, jax.numpy as jnp, hessian_lab as hl
  >>> loss = lambda p, b: 0.5 * jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
  >>> x, y = jnp.diag(jnp.arange(1.0, 5.0)), jnp.zeros(4)
  >>> p = {"w": jnp.zeros(4)}
  >>> H = hl.full_data_hvp(loss, p, (x, y), chunk_size=3)
  >>> round(float(hl.top_eigs(H, {"w": jnp.ones(4)}, k=1, num_iters=4).values[0]), 4)
  4.0
"""

from . import tree as tree
from ._batch_sharpness import BatchSharpnessResult as BatchSharpnessResult
from ._batch_sharpness import batch_sharpness as batch_sharpness
from ._blocks import AlignmentResult as AlignmentResult
from ._blocks import BlockSpectra as BlockSpectra
from ._blocks import alignment as alignment
from ._blocks import alignment_callback as alignment_callback
from ._blocks import block_operator as block_operator
from ._blocks import block_spectra as block_spectra
from ._blocks import js_distances as js_distances
from ._blocks import leaf_paths as leaf_paths
from ._central_flow import gd_central_flow as gd_central_flow
from ._conv_layout import convs_as_matmuls as convs_as_matmuls
from ._conv_layout import in_loop as in_loop
from ._critical import CriticalResult as CriticalResult
from ._critical import critical_sharpness as critical_sharpness
from ._critical import critical_sharpness_callback as critical_sharpness_callback
from ._critical import update_direction as update_direction
from ._full_data import full_data_ggn as full_data_ggn
from ._full_data import full_data_hvp as full_data_hvp
from ._lanczos import EigResult as EigResult
from ._lanczos import bottom_eigs as bottom_eigs
from ._lanczos import top_eigs as top_eigs
from ._matvec import NonFiniteError as NonFiniteError
from ._ntk import ntk_top_eig as ntk_top_eig
from ._ntk import ntk_trace as ntk_trace
from ._operators import Operator as Operator
from ._operators import check_deterministic as check_deterministic
from ._operators import ggn as ggn
from ._operators import hvp as hvp
from ._operators import linearized_hvp as linearized_hvp
from ._operators import ntk as ntk
from ._operators import restrict as restrict
from ._power import power_iteration as power_iteration
from ._precond import adam_preconditioner as adam_preconditioner
from ._precond import preconditioned_sharpness as preconditioned_sharpness
from ._precond import rmsprop_preconditioner as rmsprop_preconditioner
from ._sharding import chunk_size_for_memory as chunk_size_for_memory
from ._sharding import shard_data as shard_data
from ._sharding import sharded_full_data_ggn as sharded_full_data_ggn
from ._sharding import sharded_full_data_hvp as sharded_full_data_hvp
from ._slq import DensityResult as DensityResult
from ._slq import spectral_density as spectral_density
from ._stateful import CurvatureLoss as CurvatureLoss
from ._stateful import StatefulLoss as StatefulLoss
from ._stateful import StatefulModel as StatefulModel
from ._stateful import curvature_loss as curvature_loss
from ._stateful import stateful_loss as stateful_loss
from ._stateful_frameworks import stateful_model as stateful_model
from ._subsample import SubsampleStart as SubsampleStart
from ._subsample import subsample_start as subsample_start
from ._trace import TraceResult as TraceResult
from ._trace import trace as trace

__version__ = "0.1.0"

__all__ = [
    "AlignmentResult",
    "BatchSharpnessResult",
    "BlockSpectra",
    "CriticalResult",
    "CurvatureLoss",
    "DensityResult",
    "EigResult",
    "NonFiniteError",
    "Operator",
    "StatefulLoss",
    "StatefulModel",
    "SubsampleStart",
    "TraceResult",
    "adam_preconditioner",
    "alignment",
    "alignment_callback",
    "batch_sharpness",
    "block_operator",
    "block_spectra",
    "bottom_eigs",
    "check_deterministic",
    "chunk_size_for_memory",
    "convs_as_matmuls",
    "critical_sharpness",
    "critical_sharpness_callback",
    "curvature_loss",
    "full_data_ggn",
    "full_data_hvp",
    "gd_central_flow",
    "ggn",
    "hvp",
    "in_loop",
    "js_distances",
    "leaf_paths",
    "linearized_hvp",
    "ntk",
    "ntk_top_eig",
    "ntk_trace",
    "power_iteration",
    "preconditioned_sharpness",
    "restrict",
    "rmsprop_preconditioner",
    "shard_data",
    "sharded_full_data_ggn",
    "sharded_full_data_hvp",
    "spectral_density",
    "stateful_loss",
    "stateful_model",
    "subsample_start",
    "top_eigs",
    "trace",
    "tree",
    "update_direction",
]
