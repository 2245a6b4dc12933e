"""The style demo's tuners: one per style of `training.style_sets`, trained by the real `restune train style` path.

Each style set is written to a temporary folder as PNG files with their captions beside them, and trained with
`--prompt-template '{caption}'` and without flips (the captions say left and right), so the tuner learns the
style and the frozen model keeps drawing what the prompt says. `restune demo --diffusion` and
`restune bench styles` both train through `train_demo_styles`.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from restuning.errors import ConfigError, choices
from training.push import push_artifact
from training.style import StyleTrainConfig, train_style
from training.style_demo_config import DEMO_BATCH, DEMO_GROUPS, DEMO_IMAGES, DEMO_LR, DEMO_STEPS, DEMO_STYLES
from training.style_sets import STYLE_SEED, STYLES, write_style_set


@dataclass
class DemoStyle:
    name: str
    tuner: object  # UNetBypass, eval mode, on the pipeline's device and dtype
    artifact: object  # tuner_store TunerArtifact
    metrics: dict
    pushed: str | None = None


def demo_style_config(name: str, folder: Path, pipeline, *, steps: int, lr: float, batch_size: int,
                      seed: int, groups: int = DEMO_GROUPS) -> StyleTrainConfig:
    return StyleTrainConfig(images=str(folder), style=name, prompt_template="{caption}", steps=steps,
                            batch_size=batch_size, resolution=pipeline.default_size, lr=lr, seed=seed, flip=False,
                            device=str(pipeline.device), groups=groups)


def train_demo_styles(pipeline, *, styles=DEMO_STYLES, images: int = DEMO_IMAGES, steps: int = DEMO_STEPS,
                      lr: float = DEMO_LR, batch_size: int = DEMO_BATCH, groups: int = DEMO_GROUPS, seed: int = 0,
                      store: str | None = None,
                      progress: bool = True) -> dict[str, DemoStyle]:
    """Train one tuner per style on its generated set; push each to `store` when one is given."""
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        raise ConfigError(f"unknown style(s) {unknown}; the demo's styles are {choices(STYLES)}")
    if images < 1 or steps < 1:
        raise ConfigError(f"the demo needs at least one image and one step per style, got {images} and {steps}")
    out: dict[str, DemoStyle] = {}
    with tempfile.TemporaryDirectory(prefix="restune-style-sets-") as tmp:
        for i, name in enumerate(tqdm(styles, desc="style tuners", disable=not progress)):
            folder = write_style_set(STYLES[name], Path(tmp) / name, images, STYLE_SEED + i, pipeline.default_size)
            config = demo_style_config(name, folder, pipeline, steps=steps, lr=lr, batch_size=batch_size,
                                       seed=seed + i, groups=groups)
            result = train_style(config, pipeline, progress=progress)
            tuner = result.tuner.to(pipeline.device, pipeline.dtype).eval()
            pushed = push_artifact(result.artifact, store) if store else None
            out[name] = DemoStyle(name, tuner, result.artifact, result.metrics, pushed)
    return out
