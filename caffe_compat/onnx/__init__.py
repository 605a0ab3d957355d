"""Caffe nets to ONNX, and inference with Caffe's preprocessing.

``export.export_onnx(deploy.prototxt, weights.caffemodel, net.onnx)`` writes the graph (dynamic
batch where Caffe could reshape, optionally Caffe's input transform inside: ``transform``);
``predict.predict(net.onnx, images)`` runs it on image files with ONNX Runtime, or runs the Caffe
net itself through ``engines.TorchEngine``. Layer types map to ONNX through one converter each
(``converters``), registered like the net builder's layers.
"""
