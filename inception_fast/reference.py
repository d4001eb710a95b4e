"""The reference Inception-v4 at its public import path (`inception_fast.reference`); it lives
with its architecture in `architectures/inception_v4.py`."""

from .architectures.inception_v4 import *  # noqa: F403
from .architectures.inception_v4 import __all__  # noqa: F401
