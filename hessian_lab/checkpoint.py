"""Checkpoints: any pytree (e.g. ``(params, opt_state)``) as one ``.npz`` of its leaves.

The file holds ``leaf_00000, leaf_00001, ...`` and the tree structure as text; loading needs a
pytree ``like`` of the same structure (e.g. freshly initialised params and optimizer state), so
nothing is unpickled. Written atomically with :func:`hessian_lab.io.write_npz`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from . import io

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str | os.PathLike, tree) -> None:
    """Save a pytree (e.g. ``(params, opt_state)``) as an npz of its leaves plus its structure text."""
    leaves, treedef = jax.tree.flatten(tree)
    arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays["treedef"] = np.asarray(str(treedef))
    io.write_npz(path, arrays)


def load_checkpoint(path: str | os.PathLike, like):
    """Load a pytree saved by :func:`save_checkpoint`, with the structure of ``like``.

    ``like`` supplies the tree structure (e.g. ``(init_params, optimizer.init(init_params))``);
    the stored structure, leaf shapes and dtypes must match it.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: ``path`` is not a readable checkpoint (truncated, garbage: the message names
        it), or its structure, shapes or dtypes differ from ``like``'s.
    """
    leaves, treedef = jax.tree.flatten(like)
    z = io.read_npz(path)
    if "treedef" not in z:
        raise ValueError(f"path: {path} is not a checkpoint written by save_checkpoint")
    if str(z["treedef"]) != str(treedef):
        raise ValueError(
            f"like: structure differs from the checkpoint's\n  saved: {z['treedef']}\n  like:  {treedef}"
        )
    out = [z[f"leaf_{i:05d}"] for i in range(len(leaves))]
    for i, (a, b) in enumerate(zip(out, leaves, strict=True)):
        if a.shape != np.shape(b) or a.dtype != np.asarray(b).dtype:
            raise ValueError(
                f"like: leaf {i} is {np.shape(b)} {np.asarray(b).dtype}, checkpoint has {a.shape} {a.dtype}"
            )
    return jax.tree.unflatten(treedef, [jnp.asarray(a) for a in out])
