#!/usr/bin/env python3
"""Same as `caffe-compat import-torch` (logic in caffe_compat.net.torch_state).

    converters/torch_to_caffe.py --model deploy.prototxt --state model.safetensors|model.pt \
        [--map mapping.json|torchvision-resnet50] [--template original.caffemodel] -o out.caffemodel
"""

import sys

from caffe_compat.cli import main

if __name__ == "__main__":
    main(["import-torch", *sys.argv[1:]], prog_name="torch_to_caffe.py")
