"""Do a module's tensors match the shapes its config implies? One check for every tuner kind."""
from __future__ import annotations

from collections.abc import Mapping


def shape_problems(expected: Mapping[str, tuple[int, ...]], tensors: Mapping[str, object]) -> list[str]:
    """Missing, unexpected and misshapen tensors, each named; [] when the tensors fit `expected` exactly."""
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing tensors the config requires: {missing}")
    if unexpected:
        problems.append(f"unexpected tensors the config does not define: {unexpected}")
    for name in sorted(set(expected) & set(tensors)):
        shape = getattr(tensors[name], "shape", None)
        if shape is not None and tuple(shape) != tuple(expected[name]):
            problems.append(
                f"tensor {name!r} has shape {list(shape)}; the config and backbone imply {list(expected[name])}"
            )
    return problems
