"""pycaffe's ``caffe.proto``: ``caffe.proto.caffe_pb2`` is our wire-compatible ``caffe_pb2``."""

from caffe_compat.proto import caffe_pb2

__all__ = ["caffe_pb2"]
