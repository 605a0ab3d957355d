"""Caffe nets to ONNX and ONNX Runtime inference with Caffe's preprocessing.

``export.export_onnx(deploy.prototxt, weights.caffemodel, net.onnx)`` writes the graph;
``predict.predict(net.onnx, images, mean_file)`` runs it on image files. Layer types map to
ONNX through one converter each (``converters``), registered like the net builder's layers.
"""
