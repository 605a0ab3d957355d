#!/usr/bin/env python3
"""Same as `caffe-compat export-onnx` (logic in caffe_compat.onnx.export).

    converters/caffe_to_onnx.py --model deploy.prototxt --weights w.caffemodel -o net.onnx [--opset 17]
        [--batch dynamic|prototxt|N] [--dynamic-inputs data] [--fp16] [--fold-bn]
        [--mean_file mean.binaryproto | --mean_value 104,117,123] [--scale 0.0125] [--input-format bgr|rgb]
        [--input-uint8] [--resize 256] [--plugins mymodule] [--verify]
"""

import sys

from caffe_compat.cli import main

if __name__ == "__main__":
    main(["export-onnx", *sys.argv[1:]], prog_name="caffe_to_onnx.py")
