"""Busybox-style tool names: invoked through a link named ``caffe``, ``convert_imageset``, ...,
``caffe-compat`` acts as that Caffe tool, so ``TOOLS=./build/tools ./examples/.../create_*.sh``
runs unchanged once the links exist (``caffe-compat link-tools build/tools``; the examples'
converters live in ``build/examples/{mnist,cifar10,siamese}``, link those too).

``caffe`` takes Caffe's subcommands (``caffe train -solver ...``); every other name is one tool
and takes that tool's arguments. Caffe's build also made ``<tool>.bin`` files; those names work.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from caffe_compat.errors import CaffeCompatError

#: Caffe's tool binary -> the subcommand it runs ("" for ``caffe``, which takes subcommands).
TOOLS = {
    "caffe": "",
    "convert_imageset": "convert-imageset",
    "compute_image_mean": "compute-image-mean",
    "upgrade_net_proto_text": "upgrade-net-proto-text",
    "upgrade_net_proto_binary": "upgrade-net-proto-binary",
    "upgrade_solver_proto_text": "upgrade-solver-proto-text",
    "extract_features": "extract-features",
    "device_query": "device-query",
    "convert_mnist_data": "convert-mnist-data",  # build/examples/mnist/ in Caffe's build
    "convert_cifar_data": "convert-cifar-data",  # build/examples/cifar10/
    "convert_mnist_siamese_data": "convert-mnist-siamese-data",  # build/examples/siamese/
    "draw_net.py": "draw-net",  # Caffe's python/draw_net.py (a script, so the name keeps its .py)
}

#: The names ``link-tools`` makes: each tool and its ``.bin`` (Caffe's build has both in build/tools,
#: and only ``.bin`` for the examples' converters, which the examples' create_*.sh call; scripts
#: such as ``draw_net.py`` have no ``.bin``).
LINKS = [*TOOLS, *(f"{name}.bin" for name in TOOLS if not name.endswith(".py"))]


def tool_name(argv0: str) -> str | None:
    """The Caffe tool an ``argv[0]`` names (``/x/build/tools/caffe.bin`` -> ``caffe``), else None."""
    name = os.path.basename(argv0)
    if name.endswith(".bin"):
        name = name[: -len(".bin")]
    return name if name in TOOLS else None


def busybox_args(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """The group's arguments and program name for a command line ``argv`` (argv[0] included)."""
    tool = tool_name(argv[0]) if argv else None
    args = list(argv[1:])
    if tool is None:
        return args, None
    return ([TOOLS[tool]] if TOOLS[tool] else []) + args, tool


def link_tools(folder: str | os.PathLike[str], target: str | None = None, force: bool = False) -> list[Path]:
    """Symlinks named after Caffe's tools in ``folder``, pointing at the ``caffe-compat`` executable."""
    target = target or shutil.which("caffe-compat") or (sys.argv[0] if tool_name(sys.argv[0]) is None else None)
    if not target or not os.path.isfile(target):
        raise CaffeCompatError("cannot find the caffe-compat executable to link to; pass --target")
    target = os.path.abspath(target)
    out = Path(folder)
    try:  # the porting situation: build/tools does not exist without a Caffe build
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CaffeCompatError(f"{out}: cannot create the folder: {exc.strerror}") from None
    links = [out / name for name in LINKS]
    ours = {link for link in links if link.is_symlink() and os.path.realpath(link) == os.path.realpath(target)}
    # Every name is checked before any link is made (a dangling symlink counts as there), so a
    # refusal leaves the folder as it was.
    taken = [link for link in links if link not in ours and (link.exists() or link.is_symlink())]
    if taken and not force:
        names = ", ".join(link.name for link in taken)
        raise CaffeCompatError(f"{out}: {names} already exist(s) (pass --force to replace); no link was made")
    made: list[Path] = []
    try:
        for link in links:
            if link in ours:
                continue
            if link in taken:
                link.unlink()
            link.symlink_to(target)
            made.append(link)
    except OSError as exc:
        for link in made:
            link.unlink(missing_ok=True)
        raise CaffeCompatError(f"{exc.filename}: cannot make the link: {exc.strerror}; no link was made") from None
    return links
