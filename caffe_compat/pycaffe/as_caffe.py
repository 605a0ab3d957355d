"""``import caffe_compat.pycaffe.as_caffe`` once, and the program's own ``import caffe``,
``from caffe.proto import caffe_pb2``, ``import caffe.io`` or ``from caffe import layers as L``
all get pycaffe on caffe-compat.

WHY: ``import caffe_compat.pycaffe as caffe`` only binds a name, and Python resolves
``from caffe.proto import ...`` through the module table, so scripts that import caffe's
submodules by name need the table entries too. Registered here as ``caffe`` and
``caffe.<submodule>``; a real Caffe install, if any, is shadowed for this process only.
"""

from __future__ import annotations

import sys

import caffe_compat.pycaffe as pycaffe
from caffe_compat.pycaffe import classifier, io, net, net_spec, proto, solver  # noqa: F401  (registered below)

_PREFIX = "caffe_compat.pycaffe"
for _name, _module in list(sys.modules.items()):
    if _name == _PREFIX or _name.startswith(_PREFIX + ".") and _name != __name__:
        sys.modules["caffe" + _name[len(_PREFIX):]] = _module
sys.modules["caffe.proto.caffe_pb2"] = proto.caffe_pb2
pycaffe.__dict__.setdefault("pycaffe", pycaffe)  # pycaffe's own ``caffe.pycaffe`` module name
sys.modules["caffe.pycaffe"] = pycaffe
