"""Caffe's files without Caffe.

- ``prototxt``: nets and solvers in text format (read upgrades legacy nets; Caffe's exact text output)
- ``caffemodel``: weights as ``layer name -> [numpy arrays]`` plus the NetParameter (fast, low memory)
- ``blob``: BlobProto <-> numpy, ``.binaryproto`` mean files
- ``solverstate``: ``.solverstate`` snapshots
- ``upgrade``: Caffe's upgrade_proto (V0 -> V1 -> current, inputs, transform params, BatchNorm)
- ``upgrade_files``: the upgrade_net_proto_text / _binary tools
- ``summary``: what ``caffe-compat inspect`` prints
- ``atomic``: write-then-rename for every user-visible output
"""
