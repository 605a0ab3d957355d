"""Copy every deploy prototxt of fetched repositories into a zoo folder for benchmarks/zoo.py.

    .venv/bin/python benchmarks/zoo_collect.py /work/.mirror /tmp/zoo_all BVLC/caffe hujie-frank/SENet ...

A deploy prototxt declares its inputs (``input:``, ``input_shape``, an ``Input`` layer) and is
not a solver. Each repository's are copied from its HEAD (``MIRROR/<owner+name>/repo``, a bare
or a working git copy, as the fetch tool leaves them) to ``OUT/<owner+name>/``, named by their
path with ``/`` as ``__``, with a ``COMMIT`` file. Nothing is committed from there (the nets
are the repositories' own); ``--skip`` drops paths (copies of BVLC's examples inside forks,
templates with placeholders).
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

DEPLOY = re.compile(r'^\s*input\s*:|^\s*input_shape\s*\{|type\s*:\s*"Input"', re.M)
SOLVER = re.compile(r"^\s*(base_lr|train_net|net)\s*:", re.M)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(repo), *args], check=True, capture_output=True,
                          text=True, errors="replace").stdout


def collect(mirror: Path, out: Path, name: str, skip: list[str]) -> int:
    base = mirror / name.replace("/", "+", 1) / "repo"
    repo = base / ".git" if (base / ".git").is_dir() else base
    folder = out / name.replace("/", "+", 1)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "COMMIT").write_text(git(repo, "rev-parse", "--short=7", "HEAD"))
    count = 0
    for path in git(repo, "ls-tree", "-r", "--name-only", "HEAD").splitlines():
        if not path.endswith(".prototxt") or any(part in path for part in skip):
            continue
        text = git(repo, "show", f"HEAD:{path}")
        if DEPLOY.search(text) and not SOLVER.search(text):
            (folder / path.replace("/", "__")).write_text(text)
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mirror", type=Path, help="folder of fetched repositories (owner+name/repo)")
    parser.add_argument("out", type=Path)
    parser.add_argument("repositories", nargs="+", help="owner/name")
    parser.add_argument("--skip", default="", help="comma-separated path substrings to leave out")
    args = parser.parse_args()
    skip = [part for part in args.skip.split(",") if part]
    for name in args.repositories:
        print(f"{name}: {collect(args.mirror, args.out, name, skip)} deploy prototxts")


if __name__ == "__main__":
    main()
