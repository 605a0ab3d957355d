#!/usr/bin/env python3
"""Same as `caffe-compat predict` (logic in caffe_compat.onnx.predict).

    converters/onnx_predict.py --onnx net.onnx --mean_file mean.binaryproto IMAGES... [--providers cuda,cpu]
"""

import sys

from caffe_compat.cli import main

if __name__ == "__main__":
    main(["predict", *sys.argv[1:]], prog_name="onnx_predict.py")
