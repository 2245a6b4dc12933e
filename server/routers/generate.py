"""POST /v1/generate: every prompt × style pair in one batched pass on the frozen U-Net."""
from __future__ import annotations

from fastapi import APIRouter

from server.generation import GenerationBusyError
from server.http_errors import ERRORS, APIError
from server.routers.leases import hold
from server.schemas import GenerateRequest, GenerateResponse
from server.state import ServerState
from tuner_store.kinds import DIFFUSION


def router(state: ServerState) -> APIRouter:
    routes = APIRouter()

    @routes.post("/v1/generate", response_model=GenerateResponse, responses=ERRORS,
                 summary="Generate images for every prompt x style pair in one batched pass")
    async def generate(payload: GenerateRequest):
        if state.generator is None:
            raise APIError(404, "image generation is not enabled on this server; start it with --diffusion-model")
        from restuning.diffusion.pipeline import BASE_STYLE, GenerationInputError  # diffusers: the diffusion extra

        registry = state.registry
        styles = registry.records(DIFFUSION.name)
        others = [s for s in payload.styles if s not in styles and registry.record(s) is not None]
        if others:
            raise APIError(400, f"{', '.join(others)}: classification tuner(s), not styles; "
                                "generation needs diffusion tuners", wrong_kind=others)
        unknown = [s for s in payload.styles if s != BASE_STYLE and s not in styles]
        if unknown:
            raise APIError(404, f"unknown style(s): {', '.join(unknown)}", unknown=unknown,
                           available=[BASE_STYLE, *sorted(styles)])
        body = {"prompts": payload.prompts, "styles": payload.styles,
                "options": payload.model_dump(exclude={"prompts", "styles"}, exclude_none=True)}
        try:
            state.generator.validate(body, [BASE_STYLE, *styles])
        except GenerationInputError as exc:
            raise APIError(400, str(exc), problems=exc.problems) from None
        wanted = [s for s in dict.fromkeys(payload.styles) if s != BASE_STYLE]
        lease = await hold(state, wanted)
        try:
            return await state.generator.generate(body, {s: lease.tuners[s].module for s in wanted})
        except GenerationBusyError as exc:
            raise APIError(503, f"overloaded: {exc}", headers={"Retry-After": "5"}) from None
        except GenerationInputError as exc:
            raise APIError(400, str(exc), problems=exc.problems) from None
        finally:
            lease.release()

    return routes
