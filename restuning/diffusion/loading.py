"""Loading the frozen Stable Diffusion parts: a local diffusers directory, or `tiny-random` built in code.

Nothing is ever downloaded: directories load with `local_files_only=True`, weights only from
safetensors (a directory that has only `.bin`/`.ckpt` weights is refused, never unpickled), and
HF_HUB_OFFLINE defaults to 1 before diffusers/transformers are imported.

`tiny-random` is an SD-shaped model small enough for tests on 2 CPU cores, built with a fixed seed:
- U-Net: the SD v1.5 block layout (3 CrossAttnDownBlock2D + DownBlock2D, UNetMidBlock2DCrossAttn,
  UpBlock2D + 3 CrossAttnUpBlock2D), channels (32, 64, 64, 64), 1 layer per block, 8 norm groups,
  cross-attention dim 32; 16×16 latents by default.
- VAE: AutoencoderKL with 3 resolutions (pixel factor 4), 4 latent channels, so the default image
  is 64×64. Its latents already have std ≈ 1, so its scaling_factor is 1.0 (SD's 0.18215 exists to
  bring *its* VAE's latents to unit variance).
- Text encoder: CLIPTextModel, hidden size 32, 2 layers, 77 positions.
- Tokenizer: a real `transformers.CLIPTokenizer` (byte-level BPE) over a vocabulary built in code:
  the 256 byte symbols, each also with the end-of-word suffix `</w>`, plus <|startoftext|> and
  <|endoftext|>, and no merges, so it tokenises any text character by character.
- Scheduler config: SD v1.5's (scaled-linear betas 0.00085 → 0.012, 1000 steps, PNDM skip_prk_steps).
The weights are random: images from `tiny-random` are not pictures of anything.

`tiny-trained` is a model trained here from scratch (`restune train base-diffusion`, see
`training.base_diffusion`) on procedural captioned scenes, shipped in this package as a model directory
(`assets/tiny-trained/`, float16 safetensors, `training.json` records the command, seed and time). It denoises
pixels folded 2×2 into latents (`restuning.diffusion.pixel_space`) instead of a VAE's latents: its `vae/`
folder holds only the config of that weightless codec. Its `generation_defaults.json` sets what a request that
does not say gets (25 DDIM steps, guidance 1.5: the setting it was evaluated at, see docs/diffusion.md).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from restuning.diffusion.pixel_space import PIXEL_SPACE_CLASS, PixelUnshuffleAutoencoder
from restuning.errors import ConfigError

TINY_RANDOM = "tiny-random"
TINY_SEED = 0
TINY_TRAINED = "tiny-trained"
TINY_TRAINED_DIR = Path(__file__).resolve().parent / "assets" / TINY_TRAINED
BUILT_IN = (TINY_RANDOM, TINY_TRAINED)
REQUIRED_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer")
WEIGHT_SUFFIXES_SAFE = (".safetensors",)
WEIGHT_SUFFIXES_UNSAFE = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
GENERATION_DEFAULTS_FILE = "generation_defaults.json"
# key -> (type, what it must be); "reason" is free text for the person reading the file
GENERATION_DEFAULT_KEYS = {"steps": "a positive integer", "guidance_scale": "a number >= 1",
                           "sampler": "a sampler name", "reason": "text"}

# Stable Diffusion v1.5 scheduler/scheduler_config.json (PNDM) — also used for tiny-random.
SD15_SCHEDULER_CONFIG: dict = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "trained_betas": None,
}

TINY_UNET_CONFIG: dict = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64, 64, 64],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
}
TINY_VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 1.0,
}
TINY_TEXT_CONFIG: dict = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 32,
}


def ensure_offline() -> None:
    """Default the Hugging Face libraries to offline mode before they are imported (no downloads, no telemetry)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@dataclass
class DiffusionComponents:
    """The frozen parts of a Stable Diffusion model, in float32 on CPU as loaded."""

    name: str
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict
    source: str  # "tiny-random:<seed>" or the directory
    # What a request that does not say gets on this model (`generation_defaults.json`): e.g. the guidance at
    # which it was evaluated. Empty: the paper's defaults (GenerationLimits).
    generation_defaults: dict = field(default_factory=dict)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def tiny_vocab() -> dict[str, int]:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    symbols = list(bytes_to_unicode().values())
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    return vocab


def build_tiny_random(seed: int = TINY_SEED) -> DiffusionComponents:
    """The tiny SD-shaped model, deterministic for a seed; the global RNG is left untouched."""
    ensure_offline()  # before the Hugging Face libraries are imported
    from diffusers import AutoencoderKL, UNet2DConditionModel  # slow to import (seconds); only models need it
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # slow to import (seconds); only models need it

    vocab = tiny_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**TINY_VAE_CONFIG)
        torch.manual_seed(seed + 2)
        text_config = CLIPTextConfig(vocab_size=len(vocab), bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                     **TINY_TEXT_CONFIG)
        text_encoder = CLIPTextModel(text_config)
    return DiffusionComponents(
        name=TINY_RANDOM if seed == TINY_SEED else f"{TINY_RANDOM}:{seed}", unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
        scheduler_config=dict(SD15_SCHEDULER_CONFIG), source=f"tiny-random:{seed}",
    )


def save_components(components: DiffusionComponents, path: str | os.PathLike) -> Path:
    """Write the components as a diffusers directory (SD layout, safetensors only)."""
    path = Path(path)
    components.unet.save_pretrained(path / "unet", safe_serialization=True)
    if isinstance(components.vae, PixelUnshuffleAutoencoder):  # weightless: its config is all there is
        (path / "vae").mkdir(parents=True, exist_ok=True)
        (path / "vae" / "config.json").write_text(json.dumps(components.vae.to_config(), indent=2) + "\n")
    else:
        components.vae.save_pretrained(path / "vae", safe_serialization=True)
    components.text_encoder.save_pretrained(path / "text_encoder", safe_serialization=True)
    components.tokenizer.save_pretrained(path / "tokenizer")
    (path / "scheduler").mkdir(parents=True, exist_ok=True)
    # The sampler a diffusers pipeline would build from this directory: PNDM (PLMS) as SD v1.5 ships, or DDIM
    # for a U-Net that predicts the clean sample (PNDM cannot step on that; see pipeline.SAMPLER_PREDICTIONS).
    sampler_class = "DDIMScheduler" if components.scheduler_config.get("prediction_type") == "sample" \
        else "PNDMScheduler"
    scheduler = {"_class_name": sampler_class, **components.scheduler_config}
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
    if components.generation_defaults:
        (path / GENERATION_DEFAULTS_FILE).write_text(json.dumps(components.generation_defaults, indent=2) + "\n")
    return path


def generation_defaults_problems(defaults: object, where: str) -> list[str]:
    if not isinstance(defaults, dict):
        return [f"{where} must hold a JSON object with any of {sorted(GENERATION_DEFAULT_KEYS)}"]
    problems = [f"{where}: unknown key {k!r}; the keys are {sorted(GENERATION_DEFAULT_KEYS)}"
                for k in defaults if k not in GENERATION_DEFAULT_KEYS]
    steps, guidance = defaults.get("steps", 1), defaults.get("guidance_scale", 1.0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        problems.append(f"{where}: steps must be {GENERATION_DEFAULT_KEYS['steps']}, got {steps!r}")
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not guidance >= 1:
        problems.append(f"{where}: guidance_scale must be {GENERATION_DEFAULT_KEYS['guidance_scale']}, "
                        f"got {guidance!r}")
    if not isinstance(defaults.get("sampler", ""), str) or not isinstance(defaults.get("reason", ""), str):
        problems.append(f"{where}: sampler and reason must be strings")
    return problems


def _pixel_space_config(folder: Path) -> dict | None:
    """The vae/ folder's config when it names the weightless pixel-space codec, else None."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and config.get("_class_name") == PIXEL_SPACE_CLASS else None


def directory_problems(path: Path) -> list[str]:
    """Everything wrong with a diffusers directory before anything is loaded."""
    names = f"{TINY_RANDOM!r}, {TINY_TRAINED!r}"
    if not path.exists():
        return [f"diffusion model {str(path)!r} does not exist; give {names} or a local diffusers directory "
                "(SD v1.5 layout: unet/, vae/, text_encoder/, tokenizer/, scheduler/)"]
    if not path.is_dir():
        return [f"diffusion model {str(path)!r} is not a directory; give {names} or a diffusers directory"]
    problems = []
    for sub in REQUIRED_SUBFOLDERS:
        folder = path / sub
        if not folder.is_dir():
            problems.append(f"{folder} is missing (a diffusers directory has {', '.join(REQUIRED_SUBFOLDERS)})")
            continue
        if sub == "tokenizer":
            continue
        if not (folder / "config.json").is_file():
            problems.append(f"{folder / 'config.json'} is missing")
        if sub == "vae" and _pixel_space_config(folder) is not None:
            continue  # the pixel-space codec has no weights
        files = [f.name for f in folder.iterdir() if f.is_file()]
        safe = [f for f in files if f.endswith(WEIGHT_SUFFIXES_SAFE)]
        unsafe = [f for f in files if f.endswith(WEIGHT_SUFFIXES_UNSAFE)]
        if not safe and unsafe:
            problems.append(
                f"{folder} holds only pickle-based weights ({', '.join(sorted(unsafe))}); restune loads safetensors "
                "only: convert them (e.g. save_pretrained(safe_serialization=True)) on a trusted machine"
            )
        elif not safe:
            problems.append(f"{folder} has no .safetensors weights")
    return problems


def load_directory(path: str | os.PathLike) -> DiffusionComponents:
    ensure_offline()  # before the Hugging Face libraries are imported
    from diffusers import AutoencoderKL, UNet2DConditionModel  # slow to import (seconds); only models need it
    from transformers import CLIPTextModel, CLIPTokenizer  # slow to import (seconds); only models need it

    path = Path(path)
    problems = directory_problems(path)
    if problems:
        raise ConfigError(problems)

    common = {"local_files_only": True, "use_safetensors": True}
    unet = UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=torch.float32, **common)
    pixel_space = _pixel_space_config(path / "vae")
    if pixel_space is not None:
        vae = PixelUnshuffleAutoencoder.from_config(pixel_space)
    else:
        vae = AutoencoderKL.from_pretrained(path / "vae", torch_dtype=torch.float32, **common)
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", dtype=torch.float32, **common)
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    scheduler_config = dict(SD15_SCHEDULER_CONFIG)
    sched_file = path / "scheduler" / "scheduler_config.json"
    if sched_file.is_file():
        loaded = json.loads(sched_file.read_text())
        scheduler_config.update({k: v for k, v in loaded.items() if not k.startswith("_")})
    problems = []
    generation_defaults: dict = {}
    defaults_file = path / GENERATION_DEFAULTS_FILE
    if defaults_file.is_file():
        try:
            generation_defaults = json.loads(defaults_file.read_text())
        except ValueError as exc:
            problems.append(f"{defaults_file} is not valid JSON: {exc}")
        else:
            problems += generation_defaults_problems(generation_defaults, str(defaults_file))
    if text_encoder.config.hidden_size != unet.config.cross_attention_dim:
        problems.append(f"text encoder hidden size {text_encoder.config.hidden_size} does not match the U-Net's "
                        f"cross_attention_dim {unet.config.cross_attention_dim}")
    latent_channels = getattr(vae.config, "latent_channels", None)
    if latent_channels is not None and latent_channels != unet.config.in_channels:
        problems.append(f"the vae's latents have {latent_channels} channels; the U-Net takes "
                        f"{unet.config.in_channels} (in_channels)")
    if problems:
        raise ConfigError(problems)
    return DiffusionComponents(
        name=path.resolve().name, unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
        tokenizer=tokenizer, scheduler_config=scheduler_config, source=str(path.resolve()),
        generation_defaults=generation_defaults,
    )


def load_components(model: str | os.PathLike) -> DiffusionComponents:
    """`tiny-random`, `tiny-trained` or a local diffusers directory; float32 on CPU."""
    if str(model) == TINY_RANDOM:
        return build_tiny_random()
    if str(model) == TINY_TRAINED:
        if not TINY_TRAINED_DIR.is_dir():
            raise ConfigError(f"the {TINY_TRAINED!r} model is not installed at {TINY_TRAINED_DIR}; train one with "
                              "`restune train base-diffusion --out DIR` and give --diffusion-model DIR")
        return load_directory(TINY_TRAINED_DIR)
    if isinstance(model, str) and model.startswith(TINY_RANDOM + ":"):
        seed = model.split(":", 1)[1]
        if not seed.isdigit():
            raise ConfigError(f"{model!r}: the seed after 'tiny-random:' must be a non-negative integer")
        return build_tiny_random(int(seed))
    return load_directory(model)
