#!/usr/bin/env python3
"""Same as `caffe-compat export-torch` (logic in caffe_compat.net.torch_state).

    converters/caffe_to_torch.py --model deploy.prototxt --weights w.caffemodel -o w.safetensors [--keys index|torch]
"""

import sys

from caffe_compat.cli import main

if __name__ == "__main__":
    main(["export-torch", *sys.argv[1:]], prog_name="caffe_to_torch.py")
