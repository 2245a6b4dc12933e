"""`restune train base-diffusion`: a small text-to-image model trained from scratch on procedural scenes.

The model is Stable Diffusion's structure at toy size, built from the same diffusers/transformers classes, so
the style bypass, the pipeline, the server and the style trainer run on it unchanged:

- text: a `CLIPTokenizer` whose vocabulary is the 256 byte symbols (any text still tokenises) plus byte-pair
  merges that make each word of the scene captions one token (`word_tokenizer`), and a `CLIPTextModel`
  (hidden 64, 2 layers, 20 positions) trained with the U-Net;
- U-Net: a `UNet2DConditionModel` on a 16×16 grid: a DownBlock2D at 16×16 (32 channels), CrossAttnDownBlock2D
  at 8×8 and 4×4 (64), the cross-attention mid block and the mirrored up blocks, 1 layer per block; the caption,
  attention-pooled, also joins every ResNet block's timestep embedding (`addition_embed_type="text"`);
- no VAE: it denoises pixels folded 2×2 into 12 channels (`restuning.diffusion.pixel_space`): 32×32 images.
  (Folded 4×4 into 48 channels on an 8×8 grid, measured: even from a lightly noised scene the U-Net returned a
  blurred blob, not the shape; 2×2 gave the edges back);
- scheduler: DDPM's linear betas (1e-4 → 0.02, 1000 steps; the scaled-linear schedule of SD's latents leaves
  too much signal at the last step for pixels). The U-Net predicts the clean image (`prediction_type="sample"`),
  sampled with DDIM, which clips each step's estimate of the image to the pixel range. Measured at this budget:
  v-prediction left visible grain in every image and ε-prediction diverged to noise; a U-Net that returns the
  image itself cannot leave noise behind, and the clip keeps colours in range.

Training: every step draws a fresh batch of captioned scenes (`training.scenes`), drops 10 % of the captions
(the unconditional branch of classifier-free guidance), adds noise at uniform timesteps and minimises the MSE
to the clean latents, each timestep weighted by min(SNR, `snr_gamma`) + 1 (normalised over the batch), so the
nearly clean steps that draw the edges count as much as the noisy ones that place the shapes; AdamW with a linear
warm-up and a cosine decay; the saved weights are an exponential moving average. The directory is written in
float16 safetensors, with `training.json` (command, config, seed, time, losses, the U-Net fingerprint).
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from restuning.devices import cpu_model
from restuning.diffusion.loading import TINY_TRAINED, DiffusionComponents, load_directory, save_components, tiny_vocab
from restuning.diffusion.pixel_space import PixelUnshuffleAutoencoder
from restuning.diffusion.unet import unet_fingerprint
from restuning.errors import ConfigError
from training import scenes as scene_data
from training.base_diffusion_config import BaseDiffusionConfig

log = logging.getLogger(__name__)

IMAGE_SIZE = scene_data.SCENE_SIZE
PIXEL_FACTOR = 2
# Pixels in [-1, 1] have std 0.67 over the scenes; × 1.5 gives the U-Net unit-variance latents, as SD's 0.18215
# does for its VAE's.
PIXEL_SCALING = 1.5
MAX_TOKENS = 20  # the longest scene caption is 12 tokens with its start and end tokens
UNET_CONFIG: dict = {
    "sample_size": IMAGE_SIZE // PIXEL_FACTOR,
    "in_channels": 3 * PIXEL_FACTOR ** 2,
    "out_channels": 3 * PIXEL_FACTOR ** 2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    # the caption, attention-pooled, joins the timestep embedding of every ResNet block (DeepFloyd IF's "text"
    # embedding): colour and shape reach every resolution, not only the cross-attention blocks
    "addition_embed_type": "text",
    "addition_embed_type_num_heads": 4,
}
TEXT_CONFIG: dict = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_TOKENS,
    "projection_dim": 64,
}
SCHEDULER_CONFIG: dict = {
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": True,
    "clip_sample_range": PIXEL_SCALING,  # the latents of pixels in [-1, 1]
    "prediction_type": "sample",
    "trained_betas": None,
}
LR_FLOOR = 0.1  # the cosine decays to this share of the peak rate
# What a request that does not say gets on the trained model (written as its generation_defaults.json).
GENERATION_DEFAULTS: dict = {
    "steps": 25,
    "sampler": "ddim",
    "guidance_scale": 1.5,
    "reason": "the guidance at which the prompted shape was recognised most often, measured on 96 held-out scene "
              "prompts at 25 DDIM steps (docs/diffusion.md); Stable Diffusion's 3.0 recognised fewer",
}


def bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges that turn each word into one token: BPE 'training' on the word list itself.

    Repeatedly merge the most frequent adjacent pair (ties: the smallest pair) until every word is one symbol.
    Applying the merges in this order, as the tokenizer does, rebuilds each word: the merges are learned from
    exactly these segmentations.
    """
    segs = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while any(len(s) > 1 for s in segs.values()):
        pairs = Counter(p for s in segs.values() for p in zip(s, s[1:]))
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, s in segs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = out
    return merges


def word_tokenizer(words: list[str], max_tokens: int = MAX_TOKENS):
    """A CLIPTokenizer over the byte symbols plus one token per word of `words` (see `bpe_merges`)."""
    from transformers import CLIPTokenizer  # slow to import (seconds); only models need it

    vocab = tiny_vocab()
    merges = bpe_merges(words)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_tokens)


def build_untrained(seed: int):
    """The fresh model: (unet, text_encoder, tokenizer, codec), initialised from `seed`."""
    from diffusers import UNet2DConditionModel  # slow to import (seconds); only models need it
    from transformers import CLIPTextConfig, CLIPTextModel  # slow to import (seconds); only models need it

    tokenizer = word_tokenizer(scene_data.vocabulary())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**UNET_CONFIG)
        torch.manual_seed(seed + 1)
        text_config = CLIPTextConfig(vocab_size=len(tokenizer.get_vocab()), bos_token_id=0, eos_token_id=1,
                                     pad_token_id=1, **TEXT_CONFIG)
        text_encoder = CLIPTextModel(text_config)
    return unet, text_encoder, tokenizer, PixelUnshuffleAutoencoder(PIXEL_FACTOR, scaling_factor=PIXEL_SCALING)


def timestep_weights(snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Loss weight of each sample's timestep: min(SNR, gamma) + 1; all ones when gamma is 0."""
    if gamma <= 0:
        return torch.ones_like(snr)
    return snr.clamp(max=gamma) + 1.0


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EMA:
    """Exponential moving average of parameters, with the usual warm-up (1 + n) / (10 + n) of the decay."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = params
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)


def train_base_diffusion(config: BaseDiffusionConfig, out: str | Path, *, progress: bool = True) -> dict:
    """Train the model and write it to `out` (a new or empty directory); returns what `training.json` records."""
    import diffusers  # slow to import (seconds); only models need it
    import transformers  # slow to import (seconds); only models need it
    from diffusers import DDPMScheduler  # slow to import (seconds); only models need it

    problems = config.problems()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        problems.append(f"--out {str(out)!r} exists and is not an empty directory; give a new directory")
    if problems:
        raise ConfigError(problems)
    if config.threads:
        torch.set_num_threads(config.threads)
    unet, text_encoder, tokenizer, codec = build_untrained(config.seed)
    noise_schedule = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items()
                                      if k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps",
                                               "prediction_type")})
    alphas_cumprod = noise_schedule.alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod)
    unet.train()
    text_encoder.train()
    params = [p for m in (unet, text_encoder) for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config.steps, config.warmup_steps))
    ema = EMA(params, config.ema_decay)
    gen = torch.Generator().manual_seed(config.seed)
    drop_rng = np.random.default_rng([config.seed, 7])
    token_cache: dict[str, torch.Tensor] = {}

    def tokens(captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in token_cache]
        if missing:
            ids = tokenizer(missing, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                            return_tensors="pt").input_ids
            token_cache.update(zip(missing, ids))
        return torch.stack([token_cache[c] for c in captions])

    losses: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(range(config.steps), desc="train base-diffusion", disable=not progress)
    # PyTorch's math attention, not its fused CPU kernel: measured here (2 threads, batch 64), the fused kernel's
    # backward at the U-Net's head size 8 made a step 13 % slower (497 vs 433 ms). Generation keeps the fused
    # kernel, which is the faster one without a backward.
    with sdpa_kernel(SDPBackend.MATH):
        for step in bar:
            batch = scene_data.scenes(config.batch_size, config.seed, start=step * config.batch_size)
            pixels = torch.from_numpy(scene_data.render_scenes(batch)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            latents = codec.encode(pixels).latent_dist.sample() * codec.config.scaling_factor
            drop = drop_rng.random(len(batch)) < config.caption_dropout
            captions = ["" if d else s.caption for s, d in zip(batch, drop)]
            context = text_encoder(tokens(captions)).last_hidden_state
            noise = torch.randn(latents.shape, generator=gen)
            t = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(batch),), generator=gen)
            noisy = noise_schedule.add_noise(latents, noise, t)
            pred = unet(noisy, t, context).sample
            errors = (pred - latents).pow(2).mean(dim=(1, 2, 3))
            weights = timestep_weights(snr[t], config.snr_gamma)
            loss = (errors * weights).sum() / weights.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            ema.update()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise ConfigError(f"the loss became {losses[-1]} at step {step + 1}; lower --lr")
            if step % 20 == 0 or step == config.steps - 1:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    ema.copy_to()
    unet.eval()
    text_encoder.eval()

    out.mkdir(parents=True, exist_ok=True)
    save_components(DiffusionComponents(name=TINY_TRAINED, unet=unet.half(), vae=codec, text_encoder=text_encoder.half(),
                                        tokenizer=tokenizer, scheduler_config=dict(SCHEDULER_CONFIG),
                                        source="restune train base-diffusion",
                                        generation_defaults=dict(GENERATION_DEFAULTS)), out)
    loaded = load_directory(out)  # what every user of the directory will see: float16 weights read as float32
    tail = losses[-max(1, len(losses) // 10):]
    record = {
        "command": config.command(str(out)),
        "config": asdict(config),
        "seed": config.seed,
        "train_seconds": round(seconds, 1),
        # CPU time of every thread of this process: on a machine shared with other jobs, wall time says little
        "train_cpu_seconds": round(cpu_seconds, 1),
        "load_average_after": _load_average(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu": cpu_model(), "torch_threads": torch.get_num_threads()},
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
        "images_seen": config.steps * config.batch_size,
        "loss_first": losses[0],
        "loss_mean_last_10pct": float(np.mean(tail)),
        "loss_curve": [round(float(np.mean(losses[i:i + 100])), 5) for i in range(0, len(losses), 100)],
        "parameters": {"unet": sum(p.numel() for p in loaded.unet.parameters()),
                       "text_encoder": sum(p.numel() for p in loaded.text_encoder.parameters()), "vae": 0},
        "weights_dtype": "float16",
        "image_size": IMAGE_SIZE,
        "unet_fingerprint": unet_fingerprint(loaded.unet),
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
