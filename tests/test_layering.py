"""The package's layers import only downward:
cli > demo, pycaffe > workflow > evaluate, report > solver, onnx > net > data > io > proto
(and the helpers every layer uses: errors, progress, atomic).

Checked on the source (every ``import``, also the ones inside functions), so a shortcut that
would tie a low layer to a high one (the data transformer needing the net, the file inspector
building nets) fails here instead of growing unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "caffe_compat"
RANK = {
    "errors": 0, "progress": 0, "atomic": 0, "proto": 0,
    "io": 1,
    "data": 2,
    "net": 3,
    "solver": 4, "onnx": 4,
    "report": 5, "evaluate": 5,
    "workflow": 6,
    "demo": 7, "pycaffe": 7,
    "cli": 8,
}
# Same rank, different packages (above rank 0, whose helpers use each other): allowed only so.
SIDEWAYS = {("evaluate", "report")}


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "caffe_compat" and len(parts) > 1 else None


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "caffe_compat":
                found += [(node.lineno, f"caffe_compat.{alias.name}") for alias in node.names]
    return found


FILES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "caffe_pb2.py")


def test_every_top_level_part_has_a_rank() -> None:
    parts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in FILES} - {"__init__"}
    assert parts <= set(RANK), sorted(parts - set(RANK))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    rel = path.relative_to(PACKAGE).parts
    mine = rel[0].removesuffix(".py")
    if mine == "__init__":
        return
    upward = []
    for line, module in imports(path):
        theirs = _part(module)
        if theirs is None or theirs == mine or theirs not in RANK:
            continue
        sideways = RANK[theirs] == RANK[mine] > 0 and (mine, theirs) not in SIDEWAYS
        if RANK[theirs] > RANK[mine] or sideways:
            upward.append(f"line {line}: {module} ({theirs}, rank {RANK[theirs]}) from {mine} (rank {RANK[mine]})")
    assert not upward, "\n".join(upward)
