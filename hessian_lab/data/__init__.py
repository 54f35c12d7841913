"""Datasets as numpy ``Dataset(x, y)`` tuples: file loaders, synthetic generators, preprocessing.

Nothing is downloaded. ``digits`` ships with scikit-learn; ``mnist`` and ``cifar10`` read the
standard files from a path the user gives; ``teacher``, ``gaussian_mixture``, ``lcg_sequences`` and
``graph_walks`` are seeded generators. ``parse_data``/``load_data`` read a data spec (``digits``,
``mnist:DIR``, ``cifar10:DIR``, ``npz:FILE``, each with ``?split=train|test``), the one string
that names a dataset on the command line, in a study's config and in Python.
"""

from ._dataset import Dataset as Dataset
from ._dataset import preprocess as preprocess
from ._dataset import random_subset as random_subset
from ._dataset import subset_indices as subset_indices
from ._dataset import to_one_hot as to_one_hot
from ._files import cifar10 as cifar10
from ._files import digits as digits
from ._files import mnist as mnist
from ._files import read_idx as read_idx
from ._sequences import graph_walks as graph_walks
from ._sequences import lcg_sequences as lcg_sequences
from ._sequences import random_graph as random_graph
from ._spec import DATA_KINDS as DATA_KINDS
from ._spec import DataSpec as DataSpec
from ._spec import load_data as load_data
from ._spec import parse_data as parse_data
from ._synthetic import gaussian_mixture as gaussian_mixture
from ._synthetic import teacher as teacher

__all__ = [
    "DATA_KINDS",
    "DataSpec",
    "Dataset",
    "cifar10",
    "digits",
    "gaussian_mixture",
    "graph_walks",
    "lcg_sequences",
    "load_data",
    "mnist",
    "parse_data",
    "preprocess",
    "random_graph",
    "random_subset",
    "read_idx",
    "subset_indices",
    "teacher",
    "to_one_hot",
]
