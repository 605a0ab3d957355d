"""Exit non-zero unless this Python's installed distributions are exactly requirements/lock.txt.

Every locked package must be installed at its locked version, and nothing else may be
installed beside them (but caffe-compat itself and pip, which the venv brings), so that what
the tests ran against is what the lock says. Run with the venv's Python: ``make check-lock``.
With ``--drift`` (``make test-latest``) it only lists how the venv differs from the lock.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements" / "lock.txt"
NOT_LOCKED = {"caffe-compat", "pip"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def canonical(name: str) -> str:
    """PEP 503 normalised name, as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins(text: str) -> dict[str, str]:
    return {canonical(m[1]): m[2] for line in text.splitlines() if (m := PIN.match(line))}


def installed_versions() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}


def differences(locked: dict[str, str], installed: dict[str, str]) -> list[str]:
    problems = []
    for name, version in sorted(locked.items()):
        have = installed.get(name)
        if have != version:
            problems.append(f"{name}: lock has {version}, installed {have or 'nothing'}")
    for name in sorted(set(installed) - set(locked) - NOT_LOCKED):
        problems.append(f"{name}: installed {installed[name]}, not in the lock")
    return problems


def main(argv: list[str]) -> int:
    locked = locked_pins(LOCK.read_text(encoding="utf-8"))
    problems = differences(locked, installed_versions())
    if "--drift" in argv:
        print("\n".join(f"drift from {LOCK.name}: {line}" for line in problems) or f"no drift from {LOCK.name}")
        return 0
    for line in problems:
        print(f"caffe-compat: error: {LOCK.name}: {line}", file=sys.stderr)
    if not problems:
        print(f"installed packages equal {LOCK.relative_to(LOCK.parent.parent)}: {len(locked)} pinned")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
