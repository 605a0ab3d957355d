"""caffe-compat: Caffe's files, tools and numerics on PyTorch and ONNX."""

__version__ = "0.1.0"
