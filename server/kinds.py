"""How this server serves each tuner kind (`tuner_store.kinds` says what a kind is).

The registry and the routers look a kind up in `SERVED_KINDS` and never branch on its name: each entry says
which frozen model a tuner of that kind must match, how a built module is installed for serving (and taken
out again), and which endpoint answers for it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from restuning.backbones.base import Backbone
from restuning.engine import MultiTaskEngine, PackedHead
from tuner_store.kinds import CLASSIFICATION, DIFFUSION, TunerKind


@dataclass(frozen=True)
class ServingRuntime:
    """The frozen models tuners run on in this process."""

    backbone: Backbone
    device: object
    dtype: object
    generator: object | None = None  # server.generation.GenerationService, when generation is enabled
    engine: MultiTaskEngine | None = None  # holds the classification heads, one slot each


@dataclass(frozen=True)
class ServedKind:
    kind: TunerKind
    endpoint: str  # where requests for tuners of this kind go
    # the fingerprint a tuner of this kind must have been trained on; None: this server does not serve the kind
    fingerprint: Callable[[ServingRuntime], str | None]
    # place a built module for serving under its name: (what requests take, or None when the weights live in a
    # shared structure such as the engine's slots; the bytes it takes there). `tag` travels with the weights.
    install: Callable[[ServingRuntime, str, object, object], "tuple[object | None, int]"]
    uninstall: Callable[[ServingRuntime, str], None]
    # what the host tier keeps of a tuner evicted for room (None: nothing, it is fetched and built again), and how
    # that is put back (the bytes it takes, or None when it no longer fits and must be built from its artifact)
    keep_evicted: Callable[[ServingRuntime, str], object | None] = lambda runtime, name: None
    reinstall: Callable[[ServingRuntime, str, object, object], int | None] = lambda runtime, name, kept, tag: None
    # the same form made from a built module without placing it (the host tier fills itself at start; it may
    # answer None when it cannot yet); None: the kind has none, and the host tier keeps the validated artifact
    pack: Callable[[ServingRuntime, object, object], object | None] | None = None

    @property
    def name(self) -> str:
        return self.kind.name


def _into_engine(runtime: ServingRuntime, name: str, module, tag) -> tuple[None, int]:
    runtime.engine.put(name, module, tag=tag)
    return None, runtime.engine.slot_bytes(name)


def _packed_from_engine(runtime: ServingRuntime, name: str) -> PackedHead | None:
    # None: no longer placed (loaded again and evicted again by another load since this eviction chose it);
    # the registry's placement lock makes the check and the export one step
    return runtime.engine.export(name) if name in runtime.engine else None


def _packed_into_engine(runtime: ServingRuntime, name: str, packed: PackedHead, tag) -> int | None:
    return runtime.engine.slot_bytes(name) if runtime.engine.put_packed(name, packed, tag=tag) else None


def _on_device(runtime: ServingRuntime, name: str, module, tag) -> tuple[object, int]:
    placed = runtime.generator.place(module)
    return placed, sum(p.numel() * p.element_size() for p in placed.parameters())


SERVED_KINDS: dict[str, ServedKind] = {
    served.name: served for served in (
        ServedKind(
            kind=CLASSIFICATION,
            endpoint="POST /v1/classify",
            fingerprint=lambda runtime: runtime.backbone.fingerprint(),
            install=_into_engine,
            uninstall=lambda runtime, name: runtime.engine.remove(name),
            keep_evicted=_packed_from_engine,
            reinstall=_packed_into_engine,
            pack=lambda runtime, module, tag: runtime.engine.pack(module, tag=tag),
        ),
        ServedKind(
            kind=DIFFUSION,
            endpoint="POST /v1/generate",
            fingerprint=lambda runtime: runtime.generator.fingerprint if runtime.generator is not None else None,
            install=_on_device,
            uninstall=lambda runtime, name: None,  # requests hold their modules; the last one frees it
        ),
    )
}
