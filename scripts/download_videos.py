#!/usr/bin/env python3
"""Same as `caffe-compat workflow download-videos` (logic in caffe_compat.workflow)."""

from caffe_compat.cli.workflow import run_step

if __name__ == "__main__":
    run_step("download-videos")
