"""``import caffe_compat.pycaffe.as_caffe``: then pycaffe scripts' own ``import caffe`` lines work."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_plain_caffe_imports_resolve_to_pycaffe(tmp_path) -> None:
    script = textwrap.dedent('''
        import caffe_compat.pycaffe.as_caffe  # the one added line
        import caffe
        import caffe.io
        from caffe import layers as L, params as P
        from caffe.proto import caffe_pb2
        import caffe_compat.pycaffe as pycaffe
        from caffe_compat.proto import caffe_pb2 as ours
        assert caffe is pycaffe and caffe.io is pycaffe.io and caffe_pb2 is ours
        assert L is pycaffe.layers and P is pycaffe.params
        n = caffe.NetSpec()
        n.data = L.Input(shape=[dict(dim=[1, 2])])
        print(str(n.to_proto()).count("Input"))
    ''')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
