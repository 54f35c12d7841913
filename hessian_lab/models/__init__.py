"""Networks as pure ``Model(init, apply)`` pairs with dict-pytree params.

``mlp`` and ``cnn`` take ``param="sp" | "ntk" | "mup"``; ``uv`` takes ``"ntp" | "mup"``. The exact
variance formulas are in each constructor's docstring.
"""

from ._base import ACTIVATIONS as _ACTIVATIONS
from ._base import PARAMS as _PARAMS
from ._base import Model as Model
from ._cnn import cnn as cnn
from ._mlp import mlp as mlp
from ._transformer import transformer as transformer
from ._uv import uv as uv

ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATIONS)
PARAMS: tuple[str, ...] = _PARAMS

__all__ = ["ACTIVATIONS", "PARAMS", "Model", "cnn", "mlp", "transformer", "uv"]
