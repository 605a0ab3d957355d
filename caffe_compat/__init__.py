"""caffe-compat: Caffe's files, tools and numerics on PyTorch and ONNX."""

from caffe_compat.net.user_code import provide_caffe

__version__ = "0.1.0"


def _pycaffe_modules():
    """pycaffe under Caffe's module names, for ``import caffe`` in Python layer modules. Wired here,
    at the root, because the layer loader sits below pycaffe; imported only when a layer module is
    (pycaffe loads torch)."""
    from caffe_compat.pycaffe.aliases import caffe_modules

    return caffe_modules()


provide_caffe(_pycaffe_modules)
