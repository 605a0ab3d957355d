"""``import caffe_compat.pycaffe.as_caffe`` once, and the program's own ``import caffe``,
``from caffe.proto import caffe_pb2``, ``import caffe.io`` or ``from caffe import layers as L``
all get pycaffe on caffe-compat.

WHY: ``import caffe_compat.pycaffe as caffe`` only binds a name, and Python resolves
``from caffe.proto import ...`` through the module table, so scripts that import caffe's
submodules by name need the table entries too. Registered here as ``caffe`` and
``caffe.<submodule>``; a real Caffe install, if any, is shadowed for this process only.
(Python layer modules get these names while caffe-compat imports them, without this module.)
"""

from __future__ import annotations

import sys

import caffe_compat.pycaffe as pycaffe
from caffe_compat.pycaffe.aliases import caffe_modules

pycaffe.__dict__.setdefault("pycaffe", pycaffe)  # pycaffe's own ``caffe.pycaffe`` module name
sys.modules.update(caffe_modules())
