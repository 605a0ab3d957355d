"""Caffe's NetState filtering: which layers of a prototxt exist in a given phase/stage/level.

Same rules as ``Net::FilterNet`` / ``Net::StateMeetsRule``: a layer with ``include`` rules is
kept if ANY include rule is met; a layer without include rules is kept unless ANY ``exclude``
rule is met; a rule is met when every condition it sets holds (phase equal, level within
``[min_level, max_level]``, all ``stage``s present, no ``not_stage`` present).
"""

from __future__ import annotations

from typing import Iterable

from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import caffe_pb2


def net_state(net_param, phase: int, stages: Iterable[str] = (), level: int = 0):
    """The NetState Caffe's ``Net(file, phase, level, stages)`` builds.

    Caffe sets phase and level and *appends* the given stages to any ``state { stage }``
    already written in the prototxt.
    """
    state = caffe_pb2.NetState()
    state.CopyFrom(net_param.state)
    state.phase = phase
    state.level = level
    state.stage.extend(stages)
    return state


def state_meets_rule(state, rule) -> bool:
    """True when ``state`` satisfies every condition set in the NetStateRule ``rule``."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(stage not in state.stage for stage in rule.stage):
        return False
    return not any(stage in state.stage for stage in rule.not_stage)


def layer_included(layer_param, state) -> bool:
    """Caffe's include/exclude decision for one LayerParameter."""
    if layer_param.include and layer_param.exclude:
        raise CaffeCompatError(
            f"layer '{layer_param.name}': specify either include rules or exclude rules, not both"
        )
    if layer_param.include:
        return any(state_meets_rule(state, rule) for rule in layer_param.include)
    return not any(state_meets_rule(state, rule) for rule in layer_param.exclude)


def filter_net(net_param, state):
    """A copy of ``net_param`` holding only the layers that exist in ``state`` (and that state)."""
    filtered = caffe_pb2.NetParameter()
    filtered.CopyFrom(net_param)
    del filtered.layer[:]
    filtered.state.CopyFrom(state)
    for layer_param in net_param.layer:
        if layer_included(layer_param, state):
            filtered.layer.add().CopyFrom(layer_param)
    return filtered
