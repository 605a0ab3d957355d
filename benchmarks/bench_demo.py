"""Wall time of `caffe-compat demo` (the README's `make demo`), step by step.

    .venv/bin/python benchmarks/bench_demo.py [--out DIR] [--threads N] [--json FILE]

Prints the demo's step table and a JSON summary (per-step seconds, total, training images/s,
test MAE) so docs/benchmarks.md can quote one run. The issue's target: under 5 minutes on a
2-core CPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="demo folder (default: a fresh temporary one)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the summary here")
    args = parser.parse_args()

    import torch

    from caffe_compat.demo import run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_demo_"))
    start = time.perf_counter()
    result = run_demo(out, echo=lambda line: print(line, file=sys.stderr))
    wall = time.perf_counter() - start
    report = out / "report" / "report.json"
    summary = {
        "command": "caffe-compat demo --out " + str(out),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu(s), torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread(s)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": round(wall, 1),
        "ok": result.ok,
        "steps": {o.name: {"status": o.status, "seconds": round(o.seconds, 1)} for o in result.outcomes},
        "test_metrics": json.loads(report.read_text())["metrics"] if report.is_file() else None,
    }
    text = json.dumps(summary, indent=1, ensure_ascii=False)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
