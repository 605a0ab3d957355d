"""Count the aten ops a piece of PyTorch code dispatches and the bytes they write.

A GPU step made of thousands of small kernels is slow however fast each one is, and each
kernel's cost is roughly the memory it writes. Both numbers can be counted on a CPU, without
the GPU: every op reaches the dispatcher once, whatever device it runs on. The counts of a
training step, next to those of a plain PyTorch model of the same shapes, predicted our
measured GPU gap (issue 11), so benchmarks and tests use them as the GPU's stand-in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that move no data: views, metadata, and the autograd engine's bookkeeping.
_FREE = {"detach", "alias", "view", "_unsafe_view", "as_strided", "expand", "t", "permute", "reshape",
         "unsqueeze", "squeeze", "transpose", "slice", "select", "unbind", "split", "split_with_sizes",
         "_reshape_alias", "lift_fresh", "empty", "empty_strided", "empty_like", "set_", "resize_",
         "is_same_size", "_to_copy_meta"}


@dataclass
class OpCounts:
    """Per-op-name dispatch counts, bytes written per op name, and per dtype conversion
    (``"bfloat16->float32"``) the bytes and the largest element count converted."""

    ops: Counter = field(default_factory=Counter)
    bytes: Counter = field(default_factory=Counter)
    cast_bytes: Counter = field(default_factory=Counter)
    largest_cast: Counter = field(default_factory=Counter)

    @property
    def total_ops(self) -> int:
        return sum(self.ops.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


def _written(func, out) -> int:
    """Bytes of the tensors ``func`` returned that it wrote (in-place results and fresh ones,
    not views of its inputs)."""
    total = 0
    returns = func._schema.returns
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for i, value in enumerate(outs):
        if not isinstance(value, torch.Tensor):
            if isinstance(value, (list, tuple)):  # foreach ops return lists
                total += sum(t.numel() * t.element_size() for t in value if isinstance(t, torch.Tensor))
            continue
        alias = returns[i].alias_info if i < len(returns) else None
        if alias is not None and not alias.is_write:
            continue
        total += value.numel() * value.element_size()
    return total


def _mutated_inputs(func, args, kwargs) -> int:
    """Bytes of foreach in-place ops' mutated list arguments (they return nothing)."""
    total = 0
    schema = func._schema.arguments
    values = list(args) + [kwargs.get(a.name) for a in schema[len(args):]]
    for arg, value in zip(schema, values):
        if arg.alias_info is not None and arg.alias_info.is_write and isinstance(value, (list, tuple)):
            total += sum(t.numel() * t.element_size() for t in value if isinstance(t, torch.Tensor))
    return total


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as c: ...`` then ``c.counts``: aten ops and bytes written inside."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = OpCounts()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name.rstrip("_") in _FREE or name in _FREE:
            return out
        self.counts.ops[name] += 1
        written = _written(func, out)
        if not written and name.startswith("_foreach") and name.endswith("_"):
            written = _mutated_inputs(func, args, kwargs)
        self.counts.bytes[name] += written
        if name == "_to_copy" and isinstance(args[0], torch.Tensor) and args[0].dtype != out.dtype:
            kind = f"{str(args[0].dtype).removeprefix('torch.')}->{str(out.dtype).removeprefix('torch.')}"
            self.counts.cast_bytes[kind] += written
            self.counts.largest_cast[kind] = max(self.counts.largest_cast[kind], out.numel())
        return out
