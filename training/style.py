"""Train a Res-Tuning-Bypass style tuner on a folder of images (paper §5, Table 11).

The U-Net, VAE and text encoder are frozen and run with no autograd graph: their parameters never
require grad and their inputs never do, so autograd records nothing inside them. The graph starts
at the bypass and runs through the U-Net's conv_norm_out/conv_act/conv_out only. The loss is the
standard noise-prediction MSE of latent diffusion; only the bypass is optimised.

Table 11: AdamW, lr 1e-4 constant, batch 8, 10 epochs, CenterCrop + RandomHorizontalFlip, 512².
Every image is captioned `prompt_template.format(style=NAME, caption=…)`: one prompt for all images, or, when the
template uses `{caption}`, each image's own caption (the `.txt` file of the same name beside it). Captions that
describe the content teach the tuner the style alone: what the U-Net already draws from the caption is not the
tuner's to learn (the style demo trains this way, `training.style_sets`).

    result = train_style(StyleTrainConfig(images="imgs/", style="ink", diffusion_model="tiny-random", steps=50))
    result.artifact  # tuner_store TunerArtifact, kind "diffusion", name = style
"""
from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.nn import functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm

from restuning.errors import ConfigError, InputError, RestuneError
from training.style_config import StyleTrainConfig
from tuner_store.artifact import TunerArtifact, validate_artifact

log = logging.getLogger(__name__)


class ImageFolderError(InputError):
    """The image folder is missing, empty, or holds no readable image."""


@dataclass
class ImageSet:
    """Center-cropped images as uint8 [N, 3, R, R] (flips are drawn per batch), and what could not be read.

    `captions[i]` is the text of the caption file beside image i (`cat.png` + `cat.txt`), or None.
    """

    pixels: torch.Tensor
    files: list[str]
    unreadable: list[str] = field(default_factory=list)
    captions: list[str | None] = field(default_factory=list)

    def report(self) -> str:
        text = f"{len(self.files)} images"
        if self.unreadable:
            shown = ", ".join(self.unreadable[:5]) + (" …" if len(self.unreadable) > 5 else "")
            text += f"; {len(self.unreadable)} files could not be read as images and were skipped ({shown})"
        return text


def folder_files(root: Path) -> list[Path]:
    """The candidate files of an image folder; ImageFolderError when it is missing or empty."""
    if not root.exists():
        raise ImageFolderError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise ImageFolderError(f"{str(root)!r} is not a folder; --images takes a folder of images")
    candidates = sorted(
        p for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not candidates:
        raise ImageFolderError(f"image folder {str(root)!r} is empty; put the style's images (PNG, JPEG, …) in it")
    return candidates


CAPTION_SUFFIX = ".txt"


def load_image_folder(folder: str | os.PathLike, resolution: int) -> ImageSet:
    """Every readable image under `folder` (recursively, hidden files skipped): Resize + CenterCrop to resolution.

    A `.txt` file with the same name as another file beside it (`cat.png` + `cat.txt`) is that image's caption,
    not an unreadable image.
    """
    root = Path(folder)
    candidates = folder_files(root)
    stems = Counter(p.with_suffix("") for p in candidates)
    caption_files = {p.with_suffix(""): p for p in candidates
                     if p.suffix.lower() == CAPTION_SUFFIX and stems[p.with_suffix("")] > 1}
    pixels, files, unreadable, captions = [], [], [], []
    for path in candidates:
        if caption_files.get(path.with_suffix("")) == path:
            continue
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                img.load()
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            unreadable.append(str(path.relative_to(root)))
            continue
        img = TF.resize(img, resolution, interpolation=InterpolationMode.BICUBIC, antialias=True)
        img = TF.center_crop(img, [resolution, resolution])
        pixels.append(TF.pil_to_tensor(img))
        files.append(str(path.relative_to(root)))
        caption = caption_files.get(path.with_suffix(""))
        captions.append(caption.read_text(encoding="utf-8", errors="replace").strip() if caption else None)
    if not pixels:
        raise ImageFolderError(
            f"no readable image in {str(root)!r}: all {len(unreadable)} files failed to open as images "
            f"(e.g. {', '.join(unreadable[:3])})"
        )
    return ImageSet(torch.stack(pixels), files, unreadable, captions)


def image_prompts(images: ImageSet, template: str, style: str) -> list[str]:
    """The caption each image trains with: the template, with {style} and (when it has one) {caption} filled in."""
    if "{caption}" not in template:
        return [template.format(style=style)] * len(images.files)
    missing = [f for f, c in zip(images.files, images.captions) if not c]
    if missing:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        raise ImageFolderError(
            f"--prompt-template {template!r} uses each image's {{caption}}, but {len(missing)} image(s) have no "
            f"caption file (an image's caption is the .txt file of the same name beside it): {shown}"
        )
    return [template.format(style=style, caption=c) for c in images.captions]


@dataclass
class StyleTrainResult:
    tuner: torch.nn.Module
    artifact: object  # tuner_store.artifact.TunerArtifact
    metrics: dict
    images: ImageSet


def noise_scheduler(config: dict):
    """DDPM forward process with the model's own betas (what SD was trained with)."""
    from diffusers import DDPMScheduler  # diffusers: the diffusion extra

    params = inspect.signature(DDPMScheduler.__init__).parameters
    return DDPMScheduler(**{k: v for k, v in config.items() if k in params})


def training_target(scheduler, prediction_type: str, latents: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """What the U-Net learns to predict: the noise (SD v1.5), the velocity (SD 2), or the clean latents
    (`tiny-trained`)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    raise ConfigError(f"unknown prediction_type {prediction_type!r} in the model's scheduler config")


@torch.no_grad()
def timestep_loss_weights(scheduler, prediction_type: str, snr_gamma: float):
    """timesteps -> per-sample loss weights: for a model that predicts the clean image, min(SNR, gamma) + 1, the
    weighting `restune train base-diffusion` trains it with, so the nearly clean steps count beside the noisiest;
    other models: all ones. (Measured on tiny-trained, 300 steps, 32 prompts: no clear change in style strength
    against unweighted, within run-to-run noise; kept so both trainings share one loss.)"""
    if prediction_type != "sample" or snr_gamma <= 0:
        return lambda t: torch.ones(t.shape[0], device=t.device)
    from training.base_diffusion import timestep_weights  # torch-only module; loaded when a model predicts images

    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    return lambda t: timestep_weights(snr.to(t.device)[t], snr_gamma)


@torch.no_grad()
def fixed_noise_loss(pipeline, tuner, images: ImageSet, contexts: torch.Tensor, prompt_index: torch.Tensor, *,
                     seed: int = 1234, batches: int = 2, batch_size: int = 4, autocast=None) -> float:
    """The training loss (ε-, v- or x0-prediction) on fixed images, noise and timesteps (same draws for every tuner).

    `contexts[prompt_index[i]]` is image i's text embedding. With tuner=None it is the base U-Net's loss;
    comparing the two says whether training helped, free of the step-to-step noise of the training loss itself.
    """
    gen = torch.Generator().manual_seed(seed)
    scheduler = noise_scheduler(pipeline.scheduler_config)
    prediction_type = pipeline.scheduler_config.get("prediction_type", "epsilon")
    n = images.pixels.shape[0]
    total = 0.0
    for _ in range(batches):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        latents = pipeline.encode_images(images.pixels[idx].float() / 127.5 - 1.0, generator=gen).float()
        noise = torch.randn(latents.shape, generator=gen).to(latents.device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen).to(latents.device)
        noisy = scheduler.add_noise(latents, noise, t)
        with autocast if autocast is not None else contextlib.nullcontext():
            pred = pipeline.predict_noise(noisy.to(pipeline.dtype), t, contexts[prompt_index[idx]], tuner)
        target = training_target(scheduler, prediction_type, latents, noise, t)
        total += F.mse_loss(pred.float(), target.float()).item()
    return total / batches


def train_style(config: StyleTrainConfig, pipeline=None, *, progress: bool = True) -> StyleTrainResult:
    """Train one style tuner; returns the tuner, its artifact (not yet pushed) and the metrics."""
    from restuning.diffusion.pipeline import StylePipeline, resolve_device  # diffusers: the diffusion extra

    problems = config.problems()
    if problems:
        raise ConfigError(problems)
    device = resolve_device(config.device)
    if config.dtype != "float32" and device.type != "cuda" and pipeline is None:
        raise ConfigError(f"--dtype {config.dtype} is for CUDA training; use float32 on the CPU")
    folder_files(Path(config.images))  # fail fast, before the model loads
    if pipeline is None:
        pipeline = StylePipeline.load(config.diffusion_model, device=device, dtype=config.dtype)
    resolution = config.resolution or pipeline.default_size
    if resolution % pipeline.size_multiple:
        raise ConfigError(f"--resolution {resolution} is not a multiple of {pipeline.size_multiple} "
                          f"(the latent grid of {pipeline.name!r})")
    images = load_image_folder(config.images, resolution)
    log.debug("style %r: %s", config.style, images.report())

    tuner = pipeline.new_tuner(seed=config.seed, groups=config.groups, scale_factor=config.scale_factor,
                               conv_groups=config.conv_groups).train()
    optimizer = torch.optim.AdamW(tuner.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = noise_scheduler(pipeline.scheduler_config)
    prediction_type = pipeline.scheduler_config.get("prediction_type", "epsilon")
    prompts = image_prompts(images, config.prompt_template, config.style)
    distinct = list(dict.fromkeys(prompts))
    contexts = pipeline.encode_prompts(distinct)  # each distinct caption once; no_grad: the text encoder is frozen
    empty_context = pipeline.encode_prompts([""]) if config.caption_dropout > 0 else None
    prompt_index = torch.tensor([distinct.index(p) for p in prompts])
    n = images.pixels.shape[0]
    batch = min(config.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    total = config.steps or config.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(config.seed)
    # Frozen parts in half precision: the float32 bypass runs under autocast (float32 master weights);
    # float16 also needs loss scaling, bfloat16 does not.
    amp_dtype = pipeline.dtype if pipeline.dtype != torch.float32 else None
    autocast = (torch.autocast(device_type=pipeline.device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    scaler = torch.amp.GradScaler(pipeline.device.type, enabled=amp_dtype == torch.float16)
    loss_weights = timestep_loss_weights(scheduler, prediction_type, config.snr_gamma)
    eval_base = fixed_noise_loss(pipeline, None, images, contexts, prompt_index, seed=config.seed + 1,
                                 autocast=autocast)
    losses: list[float] = []
    order = torch.empty(0, dtype=torch.long)
    start = time.perf_counter()
    bar = tqdm(range(total), desc=f"train style {config.style}", disable=not progress)
    for step in bar:
        if order.numel() < batch:  # a new epoch: reshuffle; a short tail joins the next epoch's order
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        idx, order = order[:batch], order[batch:]
        pixels = images.pixels[idx].float() / 127.5 - 1.0
        flip = torch.rand(batch, generator=gen) < 0.5  # RandomHorizontalFlip(p=0.5), drawn either way
        if config.flip:
            pixels[flip] = pixels[flip].flip(-1)
        latents = pipeline.encode_images(pixels, generator=gen).float()
        noise = torch.randn(latents.shape, generator=gen).to(latents.device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen).to(latents.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = training_target(scheduler, prediction_type, latents, noise, timesteps)
        context = contexts[prompt_index[idx]]
        if empty_context is not None:  # drawn only when on, so a run without dropout keeps its random stream
            dropped = (torch.rand(batch, generator=gen) < config.caption_dropout).to(context.device)
            context = torch.where(dropped[:, None, None], empty_context, context)
        with autocast:
            pred = pipeline.predict_noise(noisy.to(pipeline.dtype), timesteps, context, tuner)
        errors = (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, target.dim())))
        weights = loss_weights(timesteps)
        loss = (errors * weights).sum() / weights.sum()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise RestuneError(f"the loss became {losses[-1]} at step {step + 1}; lower --lr")
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    seconds = time.perf_counter() - start
    tuner.eval()
    eval_trained = fixed_noise_loss(pipeline, tuner, images, contexts, prompt_index, seed=config.seed + 1,
                                    autocast=autocast)
    tail = losses[-max(1, len(losses) // 10):]
    metrics = {
        "steps": total,
        "epochs": round(total * batch / n, 3),
        "images": n,
        "unreadable_files": len(images.unreadable),
        "batch_size": batch,
        "resolution": resolution,
        "lr": config.lr,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_mean_last_10pct": sum(tail) / len(tail),
        # Same images, noise and timesteps for both: the base U-Net (= the untrained tuner) vs the trained one.
        "eval_loss_base": eval_base,
        "eval_loss_trained": eval_trained,
        "train_seconds": round(seconds, 3),
        "trainable_params": tuner.num_trainable(),
        "device": str(pipeline.device),
    }
    artifact = style_artifact(config.style, tuner, pipeline, metrics,
                              training={"prompt": distinct[0] if len(distinct) == 1 else None,
                                        "distinct_captions": len(distinct), "prompt_template": config.prompt_template,
                                        "config": {k: v for k, v in asdict(config).items()
                                                   if k not in ("images", "device")}})
    return StyleTrainResult(tuner, artifact, metrics, images)


def style_artifact(name: str, tuner, pipeline, metrics: dict, training: dict | None = None):
    """A validated tuner_store artifact of kind 'diffusion' for a trained style tuner."""
    tuner_json = tuner.config.to_json()
    if training:
        tuner_json["training"] = json.loads(json.dumps(training))
    artifact = TunerArtifact(
        name=name,
        kind="diffusion",
        labels=[],
        tuner=tuner_json,
        backbone=pipeline.backbone_json(),
        tensors={k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in tuner.state_dict().items()},
        metrics=json.loads(json.dumps(metrics)),
    )
    validate_artifact(artifact, backbone_fingerprint=pipeline.fingerprint, backbone_name=pipeline.name)
    return artifact
