"""Networks as pure ``Model(init, apply)`` pairs with dict-pytree params.

``mlp`` and ``cnn`` take ``param="sp" | "ntk" | "mup"``; ``uv`` takes ``"ntp" | "mup"``. The exact
variance formulas are in each constructor's docstring. ``cnn(..., norm="batchnorm")`` and
``resnet`` (BatchNorm by default) return a :class:`~hessian_lab.StatefulModel` instead: an
``apply(params, state, x, *, train, key)`` with the running statistics as its state.
"""

from ._base import ACTIVATIONS as _ACTIVATIONS
from ._base import PARAMS as _PARAMS
from ._base import Model as Model
from ._cnn import NORMS as _NORMS
from ._cnn import cnn as cnn
from ._mlp import mlp as mlp
from ._resnet import resnet as resnet
from ._transformer import transformer as transformer
from ._uv import uv as uv

ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATIONS)
PARAMS: tuple[str, ...] = _PARAMS
NORMS: tuple[str, ...] = _NORMS

__all__ = ["ACTIVATIONS", "NORMS", "PARAMS", "Model", "cnn", "mlp", "resnet", "transformer", "uv"]
