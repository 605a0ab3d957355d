"""pycaffe's ``caffe.Timer``: ``start()``, ``stop()``, ``ms`` (milliseconds between them).

In GPU mode Caffe's timer measures with CUDA events, so ``ms`` covers the kernels queued in
between; here ``stop()`` waits for the current CUDA device (when it is in use) for the same reason.
"""

from __future__ import annotations

import time

import torch

from caffe_compat.pycaffe import mode


class Timer:
    """Wall time from ``start()`` to ``stop()``, in milliseconds (``ms``), as Caffe's Timer."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._elapsed = 0.0
        self._running = False

    def _sync(self) -> None:
        if mode.device().type == "cuda":
            torch.cuda.synchronize()

    def start(self) -> None:
        if not self._running:
            self._sync()
            self._start = time.perf_counter()
            self._running = True

    def stop(self) -> None:
        if self._running and self._start is not None:
            self._sync()
            self._elapsed = time.perf_counter() - self._start
            self._running = False

    @property
    def ms(self) -> float:
        """Milliseconds of the last start-stop interval (stops a running timer first, as Caffe's does)."""
        self.stop()
        return self._elapsed * 1000.0
