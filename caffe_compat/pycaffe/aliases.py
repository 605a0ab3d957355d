"""caffe-compat's pycaffe under pycaffe's own module names (``caffe``, ``caffe.io``,
``caffe.proto.caffe_pb2``, ...): what ``as_caffe`` registers for a whole program, and what
``import caffe`` gives a Python layer module while caffe-compat imports it."""

from __future__ import annotations

import sys
from types import ModuleType

_PREFIX = "caffe_compat.pycaffe"
_NOT_CAFFE = {f"{_PREFIX}.as_caffe", f"{_PREFIX}.aliases"}  # ours, not pycaffe's


def caffe_modules() -> dict[str, ModuleType]:
    """``caffe`` and every loaded ``caffe.<submodule>`` name, mapped to our modules."""
    import caffe_compat.pycaffe as pycaffe

    found = {"caffe" + name[len(_PREFIX):]: module for name, module in list(sys.modules.items())
             if (name == _PREFIX or name.startswith(_PREFIX + ".")) and name not in _NOT_CAFFE}
    found["caffe.proto.caffe_pb2"] = pycaffe.proto.caffe_pb2
    found["caffe.pycaffe"] = pycaffe  # pycaffe's own ``caffe.pycaffe`` module name
    return found
