"""Look-alike of the Hephaestus package (tsattn test fixture): the same import layout, none of its code."""

from .timeseries_models import *  # noqa: F401,F403
from .training import TabularDecoder  # noqa: F401
from .utils import *  # noqa: F401,F403
