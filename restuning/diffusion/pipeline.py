"""Text-to-image with many Res-Tuning-Bypass styles in one batched pass.

    pipe = StylePipeline.load("tiny-random")            # or a local diffusers directory
    tuners = {"ink": pipe.tuner_from_artifact(artifact)}
    result = pipe.generate(["a cat", "a boat"], ["base", "ink"], tuners, steps=20, seed=7)
    result.images[0].image.save("cat-base.png")

Every (prompt, style) pair and its classifier-free-guidance branch is one row of the U-Net batch, so
each denoising step is ONE U-Net forward for the whole request; each row's bypass then uses its own
style tuner (`restuning.diffusion.routing`). `base` means no tuner: the plain U-Net.

Seeds: the initial noise of an image depends only on its own seed (drawn on the CPU with
`torch.Generator().manual_seed(seed)`), and every later operation is per row, so an image generated
inside a mixed batch equals the same (prompt, style, seed) generated alone up to floating-point
reassociation in batched kernels (tests/diffusion/test_pipeline.py states the tolerance).
With `seed=s`, prompt i uses seed s + i for every style, so a row of styles for one prompt starts
from the same noise; each GeneratedImage records the seed that reproduces it alone.

The server reuses `GenerationLimits` for its HTTP schema and maps `GenerationInputError` (an
`InputError`, so a `RestuneError`) to a 4xx; `problems` lists every problem of a request at once.
"""
from __future__ import annotations

import base64
import inspect
import io
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
from PIL import Image
from tqdm.auto import tqdm

from restuning.checks import is_int, is_number
from restuning.diffusion.bypass import (
    DEFAULT_CONV_GROUPS,
    DEFAULT_GROUPS,
    DEFAULT_SCALE_FACTOR,
    UNetBypass,
    UNetBypassConfig,
    build_unet_bypass,
    bypass_from_state,
)
from restuning.diffusion.loading import DiffusionComponents, load_components
from restuning.diffusion.pixel_space import vae_scale_factor
from restuning.diffusion.routing import RoutedBypass
from restuning.diffusion.unet import TappedUNet, tap_names, unet_fingerprint
from restuning.errors import ConfigError, InputError, choices

BASE_STYLE = "base"
SAMPLERS: tuple[str, ...] = ("pndm", "ddim")
SAMPLER_ALIASES = {"plms": "pndm"}  # PLMS is PNDM with skip_prk_steps, as Stable Diffusion runs it
# What each sampler can turn into a step, by what the U-Net predicts (the scheduler config's prediction_type):
# diffusers' PNDM takes ε and v; DDIM also takes the clean sample itself (x0), which `tiny-trained` predicts.
SAMPLER_PREDICTIONS: dict[str, tuple[str, ...]] = {"pndm": ("epsilon", "v_prediction"),
                                                   "ddim": ("epsilon", "v_prediction", "sample")}
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class GenerationLimits:
    """Documented limits of one generate request (the server's HTTP schema reuses these)."""

    max_prompts: int = 16
    max_styles: int = 16
    max_images: int = 32  # prompts × styles in one request: the U-Net batch is twice this with CFG
    max_prompt_chars: int = 1000
    min_steps: int = 1
    max_steps: int = 150
    default_steps: int = 50  # the paper's 50 PLMS steps (Table 6)
    min_guidance: float = 1.0  # 1.0 = conditional prediction only (no CFG branch is run)
    max_guidance: float = 30.0
    default_guidance: float = 3.0  # the paper's guidance scale (Tables 6 and 11)
    min_size: int = 32
    max_size: int = 1024
    max_total_pixels: int = 32 * 512 * 512  # images × height × width in one request (memory bound)
    max_seed: int = MAX_SEED
    samplers: tuple[str, ...] = SAMPLERS
    default_sampler: str = "pndm"

    def to_json(self) -> dict:
        return asdict(self)


DEFAULT_LIMITS = GenerationLimits()


class GenerationInputError(InputError):
    """A generate request is invalid; `problems` lists every problem, `unknown_styles` the styles not loaded."""

    def __init__(self, problems: Sequence[str] | str, *, unknown_styles: Sequence[str] = ()):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.unknown_styles = list(unknown_styles)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request: images are every (prompt, style) pair, prompt-major."""

    prompts: tuple[str, ...]
    styles: tuple[str, ...]
    steps: int
    guidance_scale: float
    seeds: tuple[int, ...]  # one per prompt, shared by its styles
    height: int
    width: int
    sampler: str

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return [(p, s) for p in range(len(self.prompts)) for s in range(len(self.styles))]

    @property
    def num_images(self) -> int:
        return len(self.prompts) * len(self.styles)


@dataclass
class GeneratedImage:
    prompt: str
    style: str
    seed: int
    image: object  # PIL.Image.Image

    def png_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, format="PNG")
        return buf.getvalue()

    def png_base64(self) -> str:
        return base64.b64encode(self.png_bytes()).decode("ascii")


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    timings_ms: dict[str, float]
    request: GenerationRequest
    latents: torch.Tensor | None = field(default=None, repr=False)  # final latents [N, 4, h, w], float32 CPU

    def to_json(self) -> dict:
        """The generate response body: {images: [{prompt, style, seed, png_base64}], timings_ms}."""
        return {
            "images": [{"prompt": g.prompt, "style": g.style, "seed": g.seed, "png_base64": g.png_base64()}
                       for g in self.images],
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }


def validate_request(
    prompts: object,
    styles: object,
    *,
    available_styles: Sequence[str],
    limits: GenerationLimits = DEFAULT_LIMITS,
    size_multiple: int = 8,
    default_size: int = 512,
    steps: object = None,
    guidance_scale: object = None,
    seed: object = None,
    height: object = None,
    width: object = None,
    sampler: object = None,
) -> GenerationRequest:
    """Normalise and check a request; one GenerationInputError lists every problem."""
    problems: list[str] = []
    unknown: list[str] = []
    # prompts
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        problems.append(f"prompts must be a list of strings, got {type(prompts).__name__}")
        prompt_list: list[str] = []
    else:
        prompt_list = list(prompts)
        if not prompt_list:
            problems.append("prompts must hold at least one prompt")
        elif len(prompt_list) > limits.max_prompts:
            problems.append(f"{len(prompt_list)} prompts, over the limit of {limits.max_prompts}")
        for i, p in enumerate(prompt_list):
            if not isinstance(p, str):
                problems.append(f"prompts[{i}] must be a string, got {type(p).__name__}")
            elif not p.strip():
                problems.append(f"prompts[{i}] is empty; give a non-empty prompt")
            elif len(p) > limits.max_prompt_chars:
                problems.append(f"prompts[{i}] has {len(p)} characters, over the limit of {limits.max_prompt_chars}")
    # styles
    if styles is None:
        style_list = [BASE_STYLE]
    elif isinstance(styles, str) or not isinstance(styles, (list, tuple)):
        problems.append(f"styles must be a list of style names, got {type(styles).__name__}")
        style_list = []
    else:
        style_list = list(styles)
        if not style_list:
            problems.append(f"styles must hold at least one style (use {BASE_STYLE!r} for the plain model)")
        elif len(style_list) > limits.max_styles:
            problems.append(f"{len(style_list)} styles, over the limit of {limits.max_styles}")
        bad_types = [s for s in style_list if not isinstance(s, str)]
        if bad_types:
            problems.append(f"styles must be strings, got {bad_types!r}")
        names = [s for s in style_list if isinstance(s, str)]
        dups = sorted({s for s in names if names.count(s) > 1})
        if dups:
            problems.append(f"styles are repeated: {dups}; list each style once")
        known = set(available_styles) | {BASE_STYLE}
        unknown = [s for s in dict.fromkeys(names) if s not in known]
        if unknown:
            problems.append(
                f"unknown style(s) {unknown}; available: {choices([BASE_STYLE, *sorted(set(available_styles))])}"
            )
    if prompt_list and style_list and len(prompt_list) * len(style_list) > limits.max_images:
        problems.append(
            f"{len(prompt_list)} prompts × {len(style_list)} styles = {len(prompt_list) * len(style_list)} images, "
            f"over the limit of {limits.max_images} images per request"
        )
    # steps, guidance, sampler
    steps = limits.default_steps if steps is None else steps
    if not is_int(steps) or not limits.min_steps <= steps <= limits.max_steps:
        problems.append(f"steps must be an integer in [{limits.min_steps}, {limits.max_steps}], got {steps!r}")
    guidance_scale = limits.default_guidance if guidance_scale is None else guidance_scale
    if not is_number(guidance_scale) or not limits.min_guidance <= guidance_scale <= limits.max_guidance:
        problems.append(
            f"guidance_scale must be a number in [{limits.min_guidance}, {limits.max_guidance}], got {guidance_scale!r}"
        )
    sampler = limits.default_sampler if sampler is None else sampler
    sampler = SAMPLER_ALIASES.get(sampler, sampler) if isinstance(sampler, str) else sampler
    if sampler not in limits.samplers:
        known = [*limits.samplers, *(a for a, s in SAMPLER_ALIASES.items() if s in limits.samplers)]
        if sampler in SAMPLERS:
            problems.append(f"sampler {sampler!r} cannot run this model (its U-Net predicts another quantity than "
                            f"the sampler takes); choose one of {choices(known)}")
        else:
            problems.append(f"unknown sampler {sampler!r}; choose one of {choices(known)}")
    # size
    sizes = {}
    for key, value in (("height", height), ("width", width)):
        value = default_size if value is None else value
        sizes[key] = value
        if not is_int(value) or not limits.min_size <= value <= limits.max_size:
            problems.append(f"{key} must be an integer in [{limits.min_size}, {limits.max_size}], got {value!r}")
        elif value % size_multiple:
            problems.append(f"{key} {value} is not a multiple of {size_multiple} (this model's latent grid)")
    if (prompt_list and style_list and all(is_int(v) for v in sizes.values())
            and len(prompt_list) * len(style_list) * sizes["height"] * sizes["width"] > limits.max_total_pixels):
        problems.append(
            f"{len(prompt_list) * len(style_list)} images of {sizes['height']}×{sizes['width']} exceed the limit of "
            f"{limits.max_total_pixels:,} pixels per request; ask for fewer or smaller images"
        )
    # seeds: one int for all (prompt i gets seed + i), a list with one seed per prompt, or None (random)
    seeds: list[int] = []
    if seed is None:
        base = secrets.randbelow(limits.max_seed + 1)
        seeds = [(base + i) % (limits.max_seed + 1) for i in range(len(prompt_list))]
    elif is_int(seed):
        if not 0 <= seed <= limits.max_seed:
            problems.append(f"seed must be an integer in [0, {limits.max_seed}], got {seed!r}")
        else:
            seeds = [(seed + i) % (limits.max_seed + 1) for i in range(len(prompt_list))]
    elif isinstance(seed, (list, tuple)):
        if len(seed) != len(prompt_list) or not all(is_int(s) and 0 <= s <= limits.max_seed for s in seed):
            problems.append(f"a seed list needs one integer in [0, {limits.max_seed}] per prompt "
                            f"({len(prompt_list)}), got {list(seed)!r}")
        else:
            seeds = list(seed)
    else:
        problems.append(f"seed must be an integer, a list of integers or null, got {type(seed).__name__}")
    if problems:
        raise GenerationInputError(problems, unknown_styles=unknown)
    return GenerationRequest(
        prompts=tuple(prompt_list), styles=tuple(style_list), steps=steps, guidance_scale=float(guidance_scale),
        seeds=tuple(seeds), height=sizes["height"], width=sizes["width"], sampler=sampler,
    )


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        # Half precision is what SD inference runs in on GPUs; CPUs have no fast float16 path.
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {choices(['auto', *DTYPES])}")
    return DTYPES[dtype]


def limits_for_prediction(limits: GenerationLimits, prediction_type: str) -> GenerationLimits:
    """`limits` with only the samplers that can run a U-Net predicting `prediction_type`; the default sampler
    stays unless it cannot (then the first that can, e.g. DDIM for an x0-predicting model)."""
    samplers = tuple(s for s in limits.samplers if prediction_type in SAMPLER_PREDICTIONS.get(s, ()))
    if not samplers:
        raise ConfigError(f"no sampler can run a U-Net whose prediction_type is {prediction_type!r}; the samplers "
                          f"take {sorted({p for ps in SAMPLER_PREDICTIONS.values() for p in ps})}")
    default = limits.default_sampler if limits.default_sampler in samplers else samplers[0]
    return replace(limits, samplers=samplers, default_sampler=default)


def with_model_defaults(limits: GenerationLimits, defaults: dict) -> GenerationLimits:
    """`limits` whose defaults are the model's own (`generation_defaults.json`), where it has them."""
    changes = {}
    if "steps" in defaults:
        changes["default_steps"] = min(max(int(defaults["steps"]), limits.min_steps), limits.max_steps)
    if "guidance_scale" in defaults:
        changes["default_guidance"] = min(max(float(defaults["guidance_scale"]), limits.min_guidance),
                                          limits.max_guidance)
    if "sampler" in defaults:
        sampler = SAMPLER_ALIASES.get(defaults["sampler"], defaults["sampler"])
        if sampler not in limits.samplers:
            raise ConfigError(f"the model's default sampler {defaults['sampler']!r} is not one of "
                              f"{choices([*limits.samplers, *SAMPLER_ALIASES])}")
        changes["default_sampler"] = sampler
    return replace(limits, **changes)


def _scheduler_kwargs(cls, config: dict) -> dict:
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in config.items() if k in params}


def make_scheduler(sampler: str, config: dict):
    """A fresh scheduler per generation: PNDM/PLMS and DDIM keep per-run state (PLMS keeps past noise estimates)."""
    from diffusers import DDIMScheduler, PNDMScheduler  # slow to import (seconds); only models need it

    sampler = SAMPLER_ALIASES.get(sampler, sampler)
    if sampler == "pndm":
        # skip_prk_steps: plain PLMS, as Stable Diffusion samples (the paper's "50 PLMS steps").
        return PNDMScheduler(**{**_scheduler_kwargs(PNDMScheduler, config), "skip_prk_steps": True})
    if sampler == "ddim":
        return DDIMScheduler(**_scheduler_kwargs(DDIMScheduler, config))
    raise ConfigError(f"unknown sampler {sampler!r}; choose one of {choices([*SAMPLERS, *SAMPLER_ALIASES])}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StylePipeline:
    """The frozen Stable Diffusion parts (U-Net with bypass taps, VAE, text encoder) on one device."""

    def __init__(self, components: DiffusionComponents, *, device: str | torch.device | None = "cpu",
                 dtype: str | torch.dtype | None = None, limits: GenerationLimits = DEFAULT_LIMITS,
                 kernel_backend: str | None = None):
        self.device = resolve_device(device)
        # Routed-adapter implementation for multi-style batches: None follows restuning.kernels.set_backend.
        self.kernel_backend = kernel_backend
        self.dtype = resolve_dtype(dtype, self.device)
        self.name = components.name
        self.source = components.source
        self.scheduler_config = dict(components.scheduler_config)
        self.prediction_type = str(self.scheduler_config.get("prediction_type", "epsilon"))
        self.limits = limits_for_prediction(with_model_defaults(limits, components.generation_defaults),
                                            self.prediction_type)
        # The fingerprint is taken before any dtype cast, so it names the weights, not the precision.
        self.fingerprint = unet_fingerprint(components.unet)
        for module in (components.unet, components.vae, components.text_encoder):
            module.requires_grad_(False)
            module.to(self.device, self.dtype).eval()
        self.unet = TappedUNet(components.unet)
        self.vae = components.vae
        self.text_encoder = components.text_encoder
        self.tokenizer = components.tokenizer
        self.vae_scale_factor = vae_scale_factor(self.vae)
        self.latent_channels = int(self.unet.config.in_channels)
        # Each of the U-Net's down blocks but the last halves the latent grid.
        self.size_multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        sample = self.unet.config.sample_size
        self.default_size = int(sample if isinstance(sample, int) else sample[0]) * self.vae_scale_factor
        self.scaling_factor = float(getattr(self.vae.config, "scaling_factor", 0.18215))

    @classmethod
    def load(cls, model: str = "tiny-random", device: str | torch.device | None = "cpu",
             dtype: str | torch.dtype | None = None, *, limits: GenerationLimits = DEFAULT_LIMITS,
             kernel_backend: str | None = None) -> "StylePipeline":
        """`model`: "tiny-random" or a local diffusers directory (SD v1.5 layout, safetensors only)."""
        return cls(load_components(model), device=device, dtype=dtype, limits=limits, kernel_backend=kernel_backend)

    # -- identity and tuners ----------------------------------------------------------------------

    @property
    def sampler_label(self) -> str:
        """The default sampler, as a person reads it: 'PLMS' (SD's PNDM) or 'DDIM'."""
        return {"pndm": "PLMS"}.get(self.limits.default_sampler, self.limits.default_sampler.upper())

    @property
    def tap_channels(self) -> list[int]:
        return list(self.unet.tap_channels)

    def backbone_json(self) -> dict:
        """What a diffusion artifact records about this U-Net (store validation reads tap_channels)."""
        cfg = self.unet.config
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "family": "stable-diffusion-unet",
            "tap_channels": self.tap_channels,
            "taps": tap_names(self.unet.num_up_blocks),
            "block_out_channels": list(cfg.block_out_channels),
            "cross_attention_dim": int(cfg.cross_attention_dim),
            "default_size": self.default_size,
            "size_multiple": self.size_multiple,
        }

    def bypass_config(self, *, groups: int = DEFAULT_GROUPS, scale_factor: int = DEFAULT_SCALE_FACTOR,
                      conv_groups: int = DEFAULT_CONV_GROUPS) -> UNetBypassConfig:
        return UNetBypassConfig.create(self.tap_channels, groups=groups, scale_factor=scale_factor,
                                       conv_groups=conv_groups)

    def new_tuner(self, *, seed: int | None = None, groups: int = DEFAULT_GROUPS,
                  scale_factor: int = DEFAULT_SCALE_FACTOR, conv_groups: int = DEFAULT_CONV_GROUPS) -> UNetBypass:
        """A fresh (zero-output) style tuner for this U-Net, float32 on the pipeline's device."""
        config = self.bypass_config(groups=groups, scale_factor=scale_factor, conv_groups=conv_groups)
        return build_unet_bypass(config, seed=seed).to(self.device)

    def tuner_from_artifact(self, artifact) -> UNetBypass:
        """A style tuner from a tuner_store TunerArtifact (duck-typed: kind, name, tuner, backbone, tensors).

        Refuses a classification tuner, and a tuner trained on other U-Net weights (fingerprint).
        Returns the module on this pipeline's device and dtype, in eval mode.
        """
        name = getattr(artifact, "name", "?")
        kind = getattr(artifact, "kind", None)
        if kind != "diffusion":
            raise ConfigError(f"tuner {name!r} is a {kind!r} tuner; image generation needs a 'diffusion' tuner")
        backbone = artifact.backbone if isinstance(artifact.backbone, dict) else {}
        theirs = backbone.get("fingerprint")
        if theirs != self.fingerprint:
            raise ConfigError(
                f"tuner {name!r} was trained on U-Net {backbone.get('name')!r} (fingerprint "
                f"{str(theirs)[:12]}…), but this pipeline's U-Net {self.name!r} has fingerprint "
                f"{self.fingerprint[:12]}…; a style tuner only works on the exact U-Net it was trained with"
            )
        module = bypass_from_state(artifact.tuner, artifact.tensors, {"tap_channels": self.tap_channels,
                                                                       "name": self.name})
        return module.to(self.device, self.dtype).eval()

    # -- building blocks (shared with training) ---------------------------------------------------

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP text embeddings [len(prompts), 77, D], padded to the tokenizer's max length as SD does."""
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(self.device)).last_hidden_state.to(self.dtype)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents of images in [-1, 1] ([B, 3, H, W]): a sample of the VAE posterior × scaling_factor."""
        posterior = self.vae.encode(images.to(self.device, self.dtype)).latent_dist
        return posterior.sample(generator=generator) * self.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch_size: int = 8) -> list:
        """PIL images from latents, decoded in chunks (a 512² VAE decode is memory-hungry)."""
        out = []
        for start in range(0, latents.shape[0], batch_size):
            chunk = latents[start:start + batch_size].to(self.device, self.dtype) / self.scaling_factor
            pixels = self.vae.decode(chunk).sample.float()
            pixels = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            out.extend(Image.fromarray(p) for p in pixels)
        return out

    def initial_latents(self, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
        """Per-image noise from each image's own seed, drawn on the CPU so it is the same on every device."""
        shape = (1, self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float32)
                 for s in seeds]
        return torch.cat(noise).to(self.device, self.dtype)

    # -- generation -------------------------------------------------------------------------------

    def validate(self, prompts: object, styles: object, available_styles: Sequence[str], **options) -> GenerationRequest:
        """Check a request without running it (the server calls this before queueing); see validate_request."""
        return validate_request(prompts, styles, available_styles=available_styles, limits=self.limits,
                                size_multiple=self.size_multiple, default_size=self.default_size, **options)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        styles: Sequence[str] | None = None,
        tuners: Mapping[str, UNetBypass] | None = None,
        *,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | Sequence[int] | None = None,
        height: int | None = None,
        width: int | None = None,
        sampler: str | None = None,
        progress: bool = False,
        decode_batch_size: int = 8,
        return_latents: bool = False,
    ) -> GenerationResult:
        """One image per (prompt, style) pair, prompt-major, all pairs in one U-Net batch per step.

        `tuners` maps style name -> UNetBypass (on this device/dtype, e.g. from `tuner_from_artifact`);
        only the requested styles are used. Raises GenerationInputError (an InputError) for a bad request.
        """
        tuners = dict(tuners or {})
        req = self.validate(prompts, styles, list(tuners), steps=steps, guidance_scale=guidance_scale, seed=seed,
                            height=height, width=width, sampler=sampler)
        t_start = time.perf_counter()
        pairs = req.pairs
        n = len(pairs)
        cfg = req.guidance_scale > 1.0

        # Text: each distinct prompt once, plus the empty prompt for the unconditional branch.
        texts = list(dict.fromkeys(req.prompts))
        emb = self.encode_prompts(texts + [""] if cfg else texts)
        index_of = {t: i for i, t in enumerate(texts)}
        cond = emb[[index_of[req.prompts[p]] for p, _ in pairs]]
        context = torch.cat([emb[-1:].expand(n, -1, -1), cond]) if cfg else cond
        _sync(self.device)
        t_text = time.perf_counter()

        # Routing: every row of the (doubled) batch uses its pair's style; base rows use no tuner.
        styled = [s for s in req.styles if s != BASE_STYLE]
        plan = None
        if styled:
            routed = RoutedBypass([tuners[s] for s in styled])
            row_style = [styled.index(req.styles[s]) if req.styles[s] != BASE_STYLE else -1 for _, s in pairs]
            plan = routed.plan(row_style * 2 if cfg else row_style, device=self.device,
                               kernel_backend=self.kernel_backend)

        scheduler = make_scheduler(req.sampler, self.scheduler_config)
        scheduler.set_timesteps(req.steps, device=self.device)
        latents = self.initial_latents([req.seeds[p] for p, _ in pairs], req.height, req.width)
        latents = latents * scheduler.init_noise_sigma
        timesteps = scheduler.timesteps

        for t in tqdm(timesteps, desc="denoising", disable=not progress, leave=False):
            model_in = torch.cat([latents, latents]) if cfg else latents
            model_in = scheduler.scale_model_input(model_in, t)
            noise = self.unet(model_in, t, context, bypass=plan)
            if cfg:
                uncond, text = noise.chunk(2)
                noise = uncond + req.guidance_scale * (text - uncond)
            latents = scheduler.step(noise, t, latents).prev_sample
        _sync(self.device)
        t_denoise = time.perf_counter()

        pil = self.decode_latents(latents, batch_size=decode_batch_size)
        _sync(self.device)
        t_end = time.perf_counter()
        images = [GeneratedImage(req.prompts[p], req.styles[s], req.seeds[p], img) for (p, s), img in zip(pairs, pil)]
        timings = {
            "text_encode_ms": (t_text - t_start) * 1e3,
            "denoise_ms": (t_denoise - t_text) * 1e3,
            "decode_ms": (t_end - t_denoise) * 1e3,
            "total_ms": (t_end - t_start) * 1e3,
            "unet_forwards": float(len(timesteps)),
            "unet_batch": float(2 * n if cfg else n),
        }
        return GenerationResult(images, timings, req, latents.float().cpu() if return_latents else None)

    # -- training support -----------------------------------------------------------------------

    def predict_noise(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                      bypass: UNetBypass | None) -> torch.Tensor:
        """The U-Net's noise prediction with one tuner for the whole batch.

        The U-Net's parameters never require grad and its inputs don't either, so autograd records
        nothing inside it; the graph starts at the bypass and runs through conv_norm_out/conv_out only.
        """
        return self.unet(noisy_latents, timesteps, context, bypass=bypass)
