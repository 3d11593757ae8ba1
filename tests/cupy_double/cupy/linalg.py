"""``cupy.linalg`` of the double: numpy.linalg underneath, only the real names."""
import numpy as _numpy

from ._core import populate as _populate

_populate("cupy.linalg", globals(), _numpy.linalg)
