"""pycaffe on caffe-compat: ``import caffe_compat.pycaffe as caffe`` and pycaffe code runs as is.

The names are pycaffe's: ``caffe.Net``, ``caffe.TRAIN`` / ``caffe.TEST``, ``caffe.SGDSolver`` and
the other solvers, ``caffe.get_solver`` / ``get_solver_from_string``, ``caffe.set_mode_cpu`` / ``set_mode_gpu`` /
``set_device`` / ``set_random_seed``, ``caffe.io`` (``Transformer``, ``load_image``, ...),
``caffe.Classifier``, ``caffe.Layer`` (base of Python layers), ``caffe.layers`` / ``caffe.params``
/ ``caffe.NetSpec`` / ``caffe.to_proto`` (``caffe.net_spec``), ``caffe.proto.caffe_pb2``,
``caffe.draw``, ``caffe.coord_map``, ``caffe.Timer`` and the multi-GPU globals (``has_nccl``, ...).
Underneath are the library's nets and solvers, so the numbers are the library's.
"""

from caffe_compat.net.layers.python_layer import PythonLayerBase as Layer
from caffe_compat.net.registry import TEST, TRAIN
from caffe_compat.pycaffe import coord_map, draw, io, net_spec, proto
from caffe_compat.pycaffe.classifier import Classifier
from caffe_compat.pycaffe.mode import (
    init_log,
    layer_type_list,
    set_device,
    set_mode_cpu,
    set_mode_gpu,
    set_random_seed,
)
from caffe_compat.pycaffe.net import Blob, Net
from caffe_compat.pycaffe.parallel import (
    NCCL,
    has_nccl,
    set_multiprocess,
    set_solver_count,
    set_solver_rank,
    solver_count,
    solver_rank,
)
from caffe_compat.pycaffe.net_spec import NetSpec, layers, params, to_proto
from caffe_compat.pycaffe.solver import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
    Solver,
    get_solver,
    get_solver_from_string,
)
from caffe_compat.pycaffe.timer import Timer

__version__ = "1.0.0"  # the BVLC Caffe release whose Python API this follows

__all__ = [
    "AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "Blob", "Classifier", "Layer", "NCCL", "Net",
    "NesterovSolver", "NetSpec", "RMSPropSolver", "SGDSolver", "Solver", "TEST", "TRAIN", "Timer", "coord_map",
    "draw", "get_solver", "get_solver_from_string", "has_nccl", "init_log", "io", "layer_type_list", "layers",
    "net_spec", "params", "proto", "set_device", "set_mode_cpu", "set_mode_gpu", "set_multiprocess",
    "set_random_seed", "set_solver_count", "set_solver_rank", "solver_count", "solver_rank", "to_proto",
]
