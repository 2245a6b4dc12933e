"""The store watcher interrupted at each point of applying a change, then restarted: it resumes from the revision it
had applied, so the change it was in the middle of is applied again (applying is idempotent) and none is skipped.

The registry, the serving runtime and the file store are real; the interruption is raised once at the chosen point
and kills the watcher task there (nothing catches it); a new `watch_forever` task is then started on the same
registry, which watches from `registry.revision`. Revisions, not clocks, say where to resume, so a wall clock that
jumps does not matter (the registry reads no clock to decide what to apply).
"""
from __future__ import annotations

import asyncio

import pytest
import torch

from restuning.engine import MultiTaskEngine
from server.kinds import ServingRuntime
from server.registry import TunerRegistry
from tests.helpers import make_artifact
from tuner_store.urls import open_store


class Interrupted(BaseException):
    """Not an Exception: nothing in the registry catches it, so the watcher task dies there, as a crash would."""


POINTS = ("before-apply", "after-store-read", "after-catalog-update", "after-load", "after-evict", "after-revision")


def _interrupt_once(registry: TunerRegistry, point: str) -> list[str]:
    """Make the watcher fail once at `point`; the returned list gets the point's name when it fired."""
    fired: list[str] = []

    def once() -> bool:
        if fired:
            return False
        fired.append(point)
        return True

    def wrap(owner, attr: str, *, before: bool, when=lambda *a, **k: True) -> None:
        real = getattr(owner, attr)

        def hooked(*args, **kwargs):
            if before and when(*args, **kwargs) and once():
                raise Interrupted(point)
            result = real(*args, **kwargs)
            if not before and when(*args, **kwargs) and once():
                raise Interrupted(point)
            return result

        setattr(owner, attr, hooked)

    if point == "before-apply":
        wrap(registry, "apply_change", before=True)
    elif point == "after-store-read":
        wrap(registry.store, "record", before=False)
    elif point == "after-catalog-update":
        wrap(registry, "_set_record", before=False)
    elif point == "after-load":  # the new version of a resident tuner built and swapped in
        wrap(registry, "_load", before=False)
    elif point == "after-evict":  # a deleted tuner taken out of the engine
        wrap(registry, "_evict", before=False)
    elif point == "after-revision":  # applied and noted; the watch had not moved on yet
        wrap(registry, "apply_change", before=False)
    return fired


def _state(registry: TunerRegistry) -> dict:
    return {"records": {n: registry.record(n).version for n in registry.names()},
            "resident": {t.name: t.version for t in registry.resident.items()},
            "engine": sorted(registry.runtime.engine.names), "revision": registry.revision}


@pytest.mark.parametrize("point", POINTS)
def test_watcher_restarted_at_each_point_of_an_apply(tmp_path, micro_backbone, point):
    url = f"file://{tmp_path / 'store'}"
    writer = open_store(url)
    for i, name in enumerate(["keep", "change", "gone"]):
        writer.put(make_artifact(micro_backbone, name, seed=i))
    registry = TunerRegistry(open_store(url), ServingRuntime(micro_backbone, "cpu", torch.float32,
                                                             engine=MultiTaskEngine(micro_backbone)))
    registry.sync()
    for name in registry.names():
        registry.ensure(name)
    fired = _interrupt_once(registry, point)

    restarts = 0

    async def main() -> None:
        nonlocal restarts
        watcher = asyncio.create_task(registry.watch_forever(retry_seconds=0.01))
        try:
            # three changes while it watches: a new version of a resident tuner, a delete, a new tuner
            await asyncio.to_thread(writer.put, make_artifact(micro_backbone, "change", seed=7))
            await asyncio.to_thread(writer.delete, "gone")
            await asyncio.to_thread(writer.put, make_artifact(micro_backbone, "new", seed=8))
            expected = {"records": {"change": 2, "keep": 1, "new": 1}, "resident": {"change": 2, "keep": 1},
                        "engine": ["change", "keep"], "revision": writer.revision()}
            deadline = asyncio.get_running_loop().time() + 30
            while _state(registry) != expected:
                assert asyncio.get_running_loop().time() < deadline, (point, _state(registry), expected)
                if watcher.done():  # it died at the point: restart it
                    assert isinstance(watcher.exception(), Interrupted)
                    restarts += 1
                    watcher = asyncio.create_task(registry.watch_forever(retry_seconds=0.01))
                await asyncio.sleep(0.02)
        finally:
            watcher.cancel()
            with pytest.raises(asyncio.CancelledError):
                await watcher

    asyncio.run(main())
    assert fired == [point] and restarts == 1  # it died there once, and the restarted watcher got past it
    assert registry.runtime.engine.names and registry.resident.get("change").version == 2
