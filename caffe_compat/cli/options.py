"""Option helpers so Caffe's gflags spellings keep working (``-weights x`` and ``--weights=x``)."""

from __future__ import annotations

import difflib
import sys
from typing import Any, Callable

import click


def caffe_option(name: str, *extra: str, **kwargs: Any) -> Callable:
    """A click option reachable as ``--name`` and Caffe's single-dash ``-name``."""
    return click.option(f"--{name}", f"-{name}", *extra, **kwargs)


class CaffeFlagsCommand(click.Command):
    """Reports a mistyped Caffe-style flag by its full name.

    click reads an unknown ``-solvr`` as the short flags ``-s -o -l ...`` and would say
    "No such option '-s'"; a user porting a shell script needs to see '-solvr' and the flag
    they probably meant.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = list(args)  # click's parser consumes ``args`` in place
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            known = [o for p in self.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)]
            typed = next((a.partition("=")[0] for a in given if a.startswith(exc.option_name)
                          and not a.startswith("--") and len(a) > 2 and a.partition("=")[0] not in known), None)
            if typed is None:
                raise
            single_dash = [o for o in known if not o.startswith("--") and len(o) > 2]
            close = difflib.get_close_matches(typed, single_dash, n=3, cutoff=0.6)
            raise click.NoSuchOption(typed, possibilities=close, ctx=ctx) from None


def progress_option() -> Callable:
    """``--progress/--no-progress``; unset means "only when stderr is a terminal", so
    ``caffe-compat ... 2>&1 | tee log`` keeps progress bars out of the log as Caffe's did."""
    return click.option("--progress/--no-progress", default=None,
                        help="Progress bar (default: when stderr is a terminal).")


def want_progress(flag: bool | None) -> bool:
    """The value of a :func:`progress_option`: the flag if given, else whether stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag
