"""Checkpoints: any pytree (e.g. ``(params, opt_state)``) as one ``.npz`` of its leaves.

The file holds ``leaf_00000, leaf_00001, ...``, the tree structure as text and the key path of
every leaf; loading needs a pytree ``like`` of the same structure (e.g. freshly initialised
params and optimizer state), so nothing is unpickled. Written atomically with
:func:`hessian_lab.io.write_npz`.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import io

__all__ = ["load_checkpoint", "save_checkpoint"]


def _paths(tree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def save_checkpoint(path: str | os.PathLike, tree) -> None:
    """Save a pytree (e.g. ``(params, opt_state)``) as an npz of its leaves plus its structure text.

    Raises:
      ValueError: ``path`` is a directory or cannot be written, or a leaf of ``tree`` is not a
        numeric array (the message names the leaf's key path).
    """
    if Path(path).is_dir():
        raise ValueError(f"path: {path} is a directory; give a file name such as ckpt.npz")
    leaves, treedef = jax.tree.flatten(tree)
    paths = _paths(tree)
    arrays = {}
    for i, (p, x) in enumerate(zip(paths, leaves, strict=True)):
        try:  # PRNG keys refuse, with advice: store jax.random.key_data(key) instead
            a = np.asarray(x)
        except TypeError:
            a = np.asarray(None)
        if a.dtype.hasobject or a.dtype.kind not in "biufcSU":
            raise ValueError(
                f"tree: leaf {p or '(root)'} is not a numeric array, got {type(x).__name__}"
                f"{' (store jax.random.key_data(key))' if hasattr(x, 'dtype') else ''}"
            )
        arrays[f"leaf_{i:05d}"] = a
    arrays["treedef"] = np.asarray(str(treedef))
    arrays["paths"] = np.asarray(paths, dtype=str)
    try:
        io.write_npz(path, arrays)
    except OSError as e:
        raise ValueError(f"path: cannot write {path}: {e.strerror or e}") from None


def _structure_error(z: dict, like) -> ValueError:
    """A one-line error naming the first leaf path that only one of the two trees has."""
    saved, mine = z.get("paths"), _paths(like)
    if saved is not None:
        saved = [str(p) for p in np.atleast_1d(saved)]
        only_saved = [p for p in saved if p not in mine]
        only_like = [p for p in mine if p not in saved]
        if only_saved or only_like:
            what = [f"like has {only_like[0]} (not in the checkpoint)"] if only_like else []
            what += [f"the checkpoint has {only_saved[0]} (not in like)"] if only_saved else []
            return ValueError(f"like: structure differs from the checkpoint's: {'; '.join(what)}")
    return ValueError(
        f"like: structure differs from the checkpoint's: saved {z['treedef']}, "
        f"like {jax.tree.structure(like)}"
    )


def load_checkpoint(path: str | os.PathLike, like):
    """Load a pytree saved by :func:`save_checkpoint`, with the structure of ``like``.

    ``like`` supplies the tree structure (e.g. ``(init_params, optimizer.init(init_params))``);
    the stored structure, leaf shapes and dtypes must match it. Object (pickled) arrays are
    never loaded.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: one line starting "path:" when ``path`` is not a readable checkpoint
        (truncated, garbage, pickled data, entries missing), or "like:" naming the first leaf
        whose key path, shape or dtype differs from the checkpoint's.
    """
    leaves, treedef = jax.tree.flatten(like)
    try:
        z = io.read_npz(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"path: no checkpoint file {path}") from None
    except io.CorruptRunError as e:
        raise io.CorruptRunError(f"path: {e}") from None
    if "treedef" not in z or z["treedef"].dtype.kind != "U":
        raise ValueError(f"path: {path} is not a checkpoint written by save_checkpoint")
    if str(z["treedef"]) != str(treedef):
        raise _structure_error(z, like)
    names = [f"leaf_{i:05d}" for i in range(len(leaves))]
    missing = [n for n in names if n not in z]
    if missing:
        raise ValueError(f"path: {path} lacks {missing[0]} (a damaged checkpoint)")
    paths = _paths(like)
    for p, n, b in zip(paths, names, leaves, strict=True):
        a = z[n]
        if a.shape != np.shape(b) or a.dtype != np.asarray(b).dtype:
            raise ValueError(
                f"like: leaf {p or '(root)'} is {np.shape(b)} {np.asarray(b).dtype}, "
                f"the checkpoint has {a.shape} {a.dtype}"
            )
    return jax.tree.unflatten(treedef, [jnp.asarray(z[n]) for n in names])
