"""How this server serves each tuner kind (`tuner_store.kinds` says what a kind is).

The registry and the routers look a kind up in `SERVED_KINDS` and never branch on its name: each entry says
which frozen model a tuner of that kind must match, how a built module is placed for serving, what requests of
that kind run on (the classification engine), and which endpoint answers for it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from restuning.backbones.base import Backbone
from restuning.engine import MultiTaskEngine
from tuner_store.kinds import CLASSIFICATION, DIFFUSION, TunerKind


@dataclass(frozen=True)
class ServingRuntime:
    """The frozen models tuners run on in this process."""

    backbone: Backbone
    device: object
    dtype: object
    generator: object | None = None  # server.generation.GenerationService, when generation is enabled


@dataclass(frozen=True)
class ServedKind:
    kind: TunerKind
    endpoint: str  # where requests for tuners of this kind go
    # the fingerprint a tuner of this kind must have been trained on; None: this server does not serve the kind
    fingerprint: Callable[[ServingRuntime], str | None]
    place: Callable[[ServingRuntime, object], object]  # a built module -> ready to serve (device, dtype, eval)
    # what requests of this kind run on, from the loaded tuners (name -> module); None when requests take modules
    assemble: Callable[[ServingRuntime, Mapping[str, object]], object | None]

    @property
    def name(self) -> str:
        return self.kind.name


def _classification_engine(runtime: ServingRuntime, modules: Mapping[str, object]) -> MultiTaskEngine | None:
    if not modules:
        return None
    return MultiTaskEngine(runtime.backbone, dict(sorted(modules.items())), device=runtime.device,
                           dtype=runtime.dtype)


SERVED_KINDS: dict[str, ServedKind] = {
    served.name: served for served in (
        ServedKind(
            kind=CLASSIFICATION,
            endpoint="POST /v1/classify",
            fingerprint=lambda runtime: runtime.backbone.fingerprint(),
            place=lambda runtime, module: module.to(device=runtime.device, dtype=runtime.dtype).eval(),
            assemble=_classification_engine,
        ),
        ServedKind(
            kind=DIFFUSION,
            endpoint="POST /v1/generate",
            fingerprint=lambda runtime: runtime.generator.fingerprint if runtime.generator is not None else None,
            place=lambda runtime, module: runtime.generator.place(module),
            assemble=lambda runtime, modules: None,  # each generate request passes its styles' modules
        ),
    )
}
