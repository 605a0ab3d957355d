"""Caffe's ``SignalHandler``: Ctrl-C / hang-up become solver actions (snapshot, stop, none).

``caffe train`` maps SIGINT to ``-sigint_effect`` (default stop) and SIGHUP to
``-sighup_effect`` (default snapshot); the solver polls the requested action once per
iteration and per test batch. A stop still ends with Caffe's ``snapshot_after_train``
snapshot, which is how Ctrl-C leaves a resumable state behind. We treat SIGTERM (what
schedulers and ``kill`` send) like SIGINT.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from caffe_compat.errors import CaffeCompatError

ACTIONS = ("stop", "snapshot", "none")


class SignalHandler:
    """Records signals; ``requested_action()`` returns the pending action once ('none' if none)."""

    def __init__(self, sigint_effect: str = "stop", sighup_effect: str = "snapshot") -> None:
        for name, value in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect)):
            if value not in ACTIONS:
                raise CaffeCompatError(f"--{name} must be one of {', '.join(ACTIONS)} (got '{value}')")
        self.effects = {"int": sigint_effect, "hup": sighup_effect}
        self.pending: list[str] = []

    def _on(self, which: str):
        def handler(signum, frame) -> None:  # noqa: ARG001 - signal API
            self.pending.append(which)

        return handler

    def requested_action(self) -> str:
        while self.pending:
            action = self.effects[self.pending.pop(0)]
            if action != "none":
                return action
        return "none"

    @contextlib.contextmanager
    def installed(self) -> Iterator["SignalHandler"]:
        """Install the handlers for the duration of training (main thread only; a no-op elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        wanted = {signal.SIGINT: "int", signal.SIGTERM: "int"}
        if hasattr(signal, "SIGHUP"):
            wanted[signal.SIGHUP] = "hup"
        old = {sig: signal.signal(sig, self._on(which)) for sig, which in wanted.items()}
        try:
            yield self
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
