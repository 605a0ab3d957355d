#!/usr/bin/env python3
"""Same as `caffe-compat predict` (logic in caffe_compat.onnx.predict).

    converters/onnx_predict.py --onnx net.onnx IMAGES... [--providers cuda,cpu]   (transform in the model)
    converters/onnx_predict.py --onnx net.onnx --mean_file mean.binaryproto IMAGES...
    converters/onnx_predict.py --engine torch --model deploy.prototxt --weights w.caffemodel --gpu 0 --bf16 \
        --compile IMAGES...
"""

import sys

from caffe_compat.cli import main

if __name__ == "__main__":
    main(["predict", *sys.argv[1:]], prog_name="onnx_predict.py")
