"""Procedural captioned scenes: flat-colour shapes on a plain background, drawn in code (no downloads).

The data of the `tiny-trained` text-to-image model (`restune train base-diffusion`), of its shape classifier
(the quality bar) and, restyled, of the demo's style sets. A scene is one or two shapes of one kind and colour:

    a red circle on the left over a blue background
    two green squares over a white background
    a yellow triangle at the top                    (phrases are left out at random, see `caption_for`)

| factor | values |
|---|---|
| shape | circle, square, triangle |
| colour | red, green, blue, yellow (never the background's colour) |
| background | black, white, gray, blue |
| count | one (position: left, right, top, bottom, middle) or two (side by side or one above the other) |

Images are 32×32 RGB by default, drawn 4× larger and box-filtered down, so edges are anti-aliased. Each scene is
drawn from its own random stream (`numpy.random.default_rng([seed, index])`), so the first k scenes of a seed are
the same whatever the number asked for, and two seeds give two independent sets.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from training.data import ImageSet, TaskInfo

SCENE_SIZE = 32
SUPERSAMPLE = 4
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 80, 225), "yellow": (240, 205, 40)}
BACKGROUNDS = {"black": (18, 18, 18), "white": (238, 238, 238), "gray": (128, 128, 128), "blue": (45, 80, 225)}
POSITIONS = {  # centre of a single shape, as fractions of the image side
    "left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3), "bottom": (0.5, 0.7), "middle": (0.5, 0.5),
}
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
                    "middle": "in the middle"}
PAIRS = {"side by side": ((0.27, 0.5), (0.73, 0.5)), "one above the other": ((0.5, 0.27), (0.5, 0.73))}
# Share of captions without the position / background phrase, so a prompt may leave either out.
DROP_POSITION = 0.1
DROP_BACKGROUND = 0.1
TWO_SHARE = 0.3


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    count: int
    position: str  # a POSITIONS key for one shape, a PAIRS key for two
    centres: tuple[tuple[float, float], ...]  # fractions of the image side
    radius: float  # fraction of the image side
    caption: str


def plural(shape: str) -> str:
    return shape + "s"


def caption_for(shape: str, colour: str, background: str | None, count: int, position: str | None) -> str:
    """The caption of a scene; `None` leaves the background or the position phrase out."""
    if count == 1:
        text = f"a {colour} {shape}"
        if position is not None:
            text += f" {POSITION_PHRASES[position]}"
    else:
        text = f"two {colour} {plural(shape)}"
        if position is not None:
            text += f" {position}"
    if background is not None:
        text += f" over a {background} background"
    return text


def draw_scene(rng: np.random.Generator) -> Scene:
    """One random scene (its factors, layout and caption) from `rng`."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    colours = [c for c in COLOURS if c != background]
    colour = colours[int(rng.integers(len(colours)))]
    count = 2 if rng.random() < TWO_SHARE else 1
    jitter = rng.uniform(-0.03, 0.03, size=(2, 2))
    if count == 1:
        position = list(POSITIONS)[int(rng.integers(len(POSITIONS)))]
        centres = ((POSITIONS[position][0] + jitter[0, 0], POSITIONS[position][1] + jitter[0, 1]),)
        radius = float(rng.uniform(0.23, 0.27))
    else:
        position = list(PAIRS)[int(rng.integers(len(PAIRS)))]
        centres = tuple((x + jitter[i, 0] * 0.5, y + jitter[i, 1] * 0.5) for i, (x, y) in enumerate(PAIRS[position]))
        radius = float(rng.uniform(0.16, 0.19))
    keep_position = rng.random() >= DROP_POSITION
    keep_background = rng.random() >= DROP_BACKGROUND
    caption = caption_for(shape, colour, background if keep_background else None, count,
                          position if keep_position else None)
    return Scene(shape, colour, background, count, position, centres, radius, caption)


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        a = r * 0.85
        return [(cx - a, cy - a), (cx + a, cy - a), (cx + a, cy + a), (cx - a, cy + a)]
    if shape == "triangle":  # pointing up, centred on its bounding box
        return [(cx, cy - r), (cx + r * 1.05, cy + r * 0.8), (cx - r * 1.05, cy + r * 0.8)]
    return None  # a circle is drawn as an ellipse


def render_scene(scene: Scene, size: int = SCENE_SIZE) -> np.ndarray:
    """The scene as uint8 [size, size, 3]."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    r = scene.radius * big
    for fx, fy in scene.centres:
        cx, cy = fx * big, fy * big
        points = _outline(scene.shape, cx, cy, r)
        if points is None:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=COLOURS[scene.colour])
        else:
            draw.polygon(points, fill=COLOURS[scene.colour])
    return np.asarray(img.resize((size, size), Image.BOX))


def scenes(count: int, seed: int, start: int = 0) -> list[Scene]:
    """Scenes start … start + count − 1 of a seed; scene i comes from its own stream (seed, i)."""
    return [draw_scene(np.random.default_rng([seed, i])) for i in range(start, start + count)]


def vocabulary() -> list[str]:
    """Every word a caption can use, in a fixed order (the tiny-trained tokenizer makes each one token)."""
    words = ["a", "two", "over", "background", *COLOURS, *BACKGROUNDS, *SHAPES, *(plural(s) for s in SHAPES)]
    for phrase in (*POSITION_PHRASES.values(), *PAIRS):
        words += phrase.split()
    return list(dict.fromkeys(words))


def render_scenes(items: list[Scene], size: int = SCENE_SIZE) -> np.ndarray:
    return np.stack([render_scene(s, size) for s in items]) if items else np.zeros((0, size, size, 3), np.uint8)


SHAPE_TASK = TaskInfo(name="scene_shape", labels=SHAPES, flip=True, crop=True, min_crop_scale=0.6,
                      description="which shape the scene shows (circle, square, triangle)")


def shape_image_set(count: int, seed: int, size: int = SCENE_SIZE, name: str = "scene_shape") -> ImageSet:
    """Scenes labelled with their shape: the classifier of the base model's quality bar trains on these."""
    items = scenes(count, seed)
    images = render_scenes(items, size)
    targets = np.array([[SHAPES.index(s.shape)] for s in items], dtype=np.int64).reshape(len(items), 1)
    return ImageSet(name=name, tasks=(SHAPE_TASK,), targets=targets,
                    item_hashes=[hashlib.sha256(im.tobytes()).hexdigest() for im in images], arrays=images,
                    source=f"procedural scenes (seed {seed})")
