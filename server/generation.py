"""Image generation behind POST /v1/generate: one request at a time on a dedicated thread.

A request already batches every (prompt, style) pair, CFG branches included, into
one U-Net forward per denoising step; requests queue (bounded) behind each other
rather than interleave, which would only split the GPU between them.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from restuning.torch_threads import DEFAULT_TORCH_THREADS, intra_op

log = logging.getLogger(__name__)


class GenerationBusyError(Exception):
    pass


class GenerationService:
    def __init__(self, pipeline, *, max_waiting: int = 4, threads: int | None = None):
        self.pipeline = pipeline
        self.max_waiting = max_waiting
        # the U-Net is the heavy work: its thread gets the cores (a second OpenMP team; see torch_threads)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="restune-generate",
                                            initializer=intra_op(threads or DEFAULT_TORCH_THREADS))
        self._pending = 0

    @classmethod
    def load(cls, settings, device, dtype) -> "GenerationService":
        from restuning.diffusion.pipeline import StylePipeline  # diffusers: the diffusion extra

        pipeline = StylePipeline.load(settings.diffusion_model, device=device, dtype=dtype)
        log.info("diffusion model %s (U-Net fingerprint %s…) on %s", pipeline.name, pipeline.fingerprint[:12], device)
        return cls(pipeline, threads=settings.torch_threads or None)

    @property
    def fingerprint(self) -> str:
        return self.pipeline.fingerprint

    @property
    def limits(self):
        return self.pipeline.limits

    def place(self, module):
        """A built style tuner on the pipeline's device and dtype, ready for requests."""
        return module.to(self.pipeline.device, self.pipeline.dtype).eval()

    def validate(self, body: dict, available_styles: list[str]):
        return self.pipeline.validate(body["prompts"], body["styles"], available_styles, **body["options"])

    async def generate(self, body: dict, tuners: dict) -> dict:
        if self._pending >= self.max_waiting + 1:
            raise GenerationBusyError(f"{self._pending} generate requests are already queued or running")
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(
                self._executor, lambda: self.pipeline.generate(body["prompts"], body["styles"], tuners, **body["options"])
            )
            images = await loop.run_in_executor(None, lambda: [
                {"prompt": im.prompt, "style": im.style, "seed": im.seed, "png_base64": im.png_base64()}
                for im in result.images
            ])
            return {"images": images, "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()}}
        finally:
            self._pending -= 1

    async def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
