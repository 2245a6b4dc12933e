"""The 19-task demo suite: real handwritten digits plus generated structured scenes, no downloads.

VTAB-1K (the paper's Table 4) has 19 tasks in three groups; this suite mirrors its *structured* group
with images drawn here, and uses real images for the rest:

| image set | images | tasks |
|---|---|---|
| `digits`  | scikit-learn's bundled handwritten digits (1,797 real 8×8 scans) | digit, parity, ≥ 5, prime, loops |
| `sprites` | dSprites-like: one white square/ellipse/heart on black, 64×64 | shape, x, y, orientation, scale |
| `clevr`   | Clevr-like: 2–7 shaded spheres/cubes/cylinders on a floor, 64×64 colour | count, distance, colour, shape, position of the nearest object |
| `norb`    | smallNORB-like: one grey polycube toy under a light, 64×64 | category, azimuth, elevation, lighting |

Tasks of one image set label the same images, so they train together from one cached backbone pass
(`restune demo`). Every task records whether a horizontal flip or a random crop keeps its label:
a mirrored digit is no longer that digit, and a crop moves positions and changes scale and counts.

Splits are fixed by the seed: digits use a stratified 1/3 test split of the 1,797 scans; generated
sets draw the train and the test images from two separate random streams. `size` takes a prefix of
a split (the same images for the same seed, whatever size the other split has).
"""
from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from training.data import ImageSet, TaskInfo
from training.errors import DataError

SAMPLE_IMAGE_PATH = Path(__file__).resolve().parent / "assets" / "sample.png"
SPLITS = ("train", "test")
RES = 64  # generated images are 64×64; the preprocessor resizes them to the backbone's input


@dataclass(frozen=True)
class DemoTask:
    name: str
    image_set: str
    labels: tuple[str, ...]
    flip: bool
    crop: bool
    description: str
    label_fn: Callable[[dict[str, np.ndarray]], np.ndarray]
    min_crop_scale: float = 0.0

    def info(self) -> TaskInfo:
        return TaskInfo(name=self.name, labels=self.labels, flip=self.flip, crop=self.crop,
                        description=self.description, min_crop_scale=self.min_crop_scale)


@dataclass(frozen=True)
class ImageSetSpec:
    name: str
    description: str
    default_train: int
    default_test: int


def _bins(values: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    return np.clip(((values - lo) / (hi - lo) * n).astype(np.int64), 0, n - 1)


# -- digits (real images) --------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _digits_pool() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # scikit-learn: the training extra, for the digits tasks only

    digits = load_digits()
    # 0..16 ink intensity -> bright ink on a dark background, uint8
    images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64)


DIGITS_TEST_FRACTION = 1 / 3
LOOPS = np.array([1, 0, 0, 0, 1, 0, 1, 0, 2, 1])  # closed loops of the printed glyph (4 counted as closed)
PRIMES = np.array([d in (2, 3, 5, 7) for d in range(10)])


def _digits_split(split: str, seed: int) -> np.ndarray:
    images, target = _digits_pool()
    rng = np.random.default_rng([seed, 1797])
    test, train = [], []
    for d in range(10):
        members = np.flatnonzero(target == d)
        members = members[rng.permutation(len(members))]
        n_test = int(round(DIGITS_TEST_FRACTION * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    chosen = np.concatenate(test if split == "test" else train)
    return chosen[rng.permutation(len(chosen))]  # a prefix of this order is a class-mixed subset


def _render_digits(split: str, seed: int, size: int | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    images, target = _digits_pool()
    order = _digits_split(split, seed)
    if size is not None:
        order = order[:size]
    return images[order], {"digit": target[order]}


# -- sprites (dSprites-like) -----------------------------------------------------------------------

SPRITE_SHAPES = ("square", "ellipse", "heart")
SPRITE_POS = (14.0, 50.0)  # centre coordinates range, pixels
SPRITE_SCALE = (0.5, 1.0)
SPRITE_ORIENT = (0.0, 90.0)  # degrees; 0-90 keeps square/ellipse orientations distinguishable


def _shape_outline(shape: str, radius: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    if shape == "square":
        a = radius * 0.8
        return np.array([[-a, -a], [a, -a], [a, a], [-a, a]])
    if shape == "ellipse":
        return np.stack([radius * np.cos(t), 0.5 * radius * np.sin(t)], 1)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], 1) * (radius / 16.0)


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return points @ rot.T


def _render_sprites(split: str, seed: int, size: int | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    n = size if size is not None else IMAGE_SETS["sprites"].default_train if split == "train" \
        else IMAGE_SETS["sprites"].default_test
    rng = np.random.default_rng([seed, 2, SPLITS.index(split)])
    # Drawn image by image, so the first k images of a split are the same whatever its size.
    draws = np.array([[rng.integers(0, 3), rng.uniform(*SPRITE_SCALE), rng.uniform(*SPRITE_ORIENT),
                       rng.uniform(*SPRITE_POS), rng.uniform(*SPRITE_POS)] for _ in range(n)]).reshape(n, 5)
    shape, scale, orient, x, y = draws[:, 0].astype(np.int64), draws[:, 1], draws[:, 2], draws[:, 3], draws[:, 4]
    out = np.zeros((n, RES, RES), np.uint8)
    ss = 2  # supersampling for smooth edges
    for i in range(n):
        img = Image.new("L", (RES * ss, RES * ss), 0)
        pts = _rotate(_shape_outline(SPRITE_SHAPES[shape[i]], 13.0 * scale[i]), orient[i])
        pts = (pts + [x[i], y[i]]) * ss
        ImageDraw.Draw(img).polygon([tuple(p) for p in pts], fill=255)
        out[i] = np.asarray(img.resize((RES, RES), Image.LANCZOS))
    return out, {"shape": shape, "scale": scale, "orientation": orient, "x": x, "y": y}


# -- clevr (Clevr-like scenes) -----------------------------------------------------------------------

CLEVR_COLORS = {
    "red": (173, 35, 35), "green": (29, 105, 20), "blue": (42, 75, 215),
    "yellow": (255, 238, 51), "purple": (129, 38, 192), "cyan": (41, 208, 208),
}
CLEVR_SHAPES = ("sphere", "cube", "cylinder")
CLEVR_COUNTS = (2, 7)
CLEVR_DISTANCE_EDGES = (0.05, 0.12, 0.23)  # depth of the nearest object: quartiles, 4 bins of equal mass


def _shade(color, factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, c * factor))) for c in color)


def _draw_clevr_object(draw, shape: str, color, cx: float, cy: float, r: float) -> None:
    # soft shadow on the floor, then the object lit from the upper left
    draw.ellipse([cx - r * 1.1, cy + r * 0.55, cx + r * 1.3, cy + r * 1.15], fill=(90, 90, 90))
    if shape == "sphere":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_shade(color, 0.75))
        draw.ellipse([cx - r * 0.75, cy - r * 0.8, cx + r * 0.45, cy + r * 0.4], fill=_shade(color, 1.0))
        draw.ellipse([cx - r * 0.45, cy - r * 0.55, cx - r * 0.05, cy - r * 0.15], fill=_shade(color, 1.35))
    elif shape == "cube":
        d = r * 0.45
        draw.polygon([(cx - r, cy - r + d), (cx - r + d, cy - r), (cx + r, cy - r), (cx + r - d, cy - r + d)],
                     fill=_shade(color, 1.25))
        draw.polygon([(cx + r - d, cy - r + d), (cx + r, cy - r), (cx + r, cy + r - d), (cx + r - d, cy + r)],
                     fill=_shade(color, 0.6))
        draw.rectangle([cx - r, cy - r + d, cx + r - d, cy + r], fill=_shade(color, 0.9))
    else:  # cylinder
        e = r * 0.35
        draw.rectangle([cx - r * 0.85, cy - r + e, cx + r * 0.85, cy + r - e], fill=_shade(color, 0.85))
        draw.ellipse([cx - r * 0.85, cy + r - 2 * e, cx + r * 0.85, cy + r], fill=_shade(color, 0.85))
        draw.ellipse([cx - r * 0.85, cy - r, cx + r * 0.85, cy - r + 2 * e], fill=_shade(color, 1.25))


def _render_clevr(split: str, seed: int, size: int | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    n = size if size is not None else IMAGE_SETS["clevr"].default_train if split == "train" \
        else IMAGE_SETS["clevr"].default_test
    rng = np.random.default_rng([seed, 3, SPLITS.index(split)])
    colors = list(CLEVR_COLORS)
    ss = 2
    floor = np.zeros((RES * ss, RES * ss, 3), np.uint8)
    ramp = np.linspace(150, 205, RES * ss).astype(np.uint8)  # lighter towards the camera
    floor[:] = ramp[:, None, None]
    out = np.zeros((n, RES, RES, 3), np.uint8)
    facts = {k: np.zeros(n, np.int64) for k in ("count", "color", "shape", "side")}
    facts["depth"] = np.zeros(n)
    for i in range(n):
        count = int(rng.integers(CLEVR_COUNTS[0], CLEVR_COUNTS[1] + 1))
        objects = []  # (depth, lateral, shape, color, big)
        for _ in range(count):
            for _attempt in range(30):
                depth, lateral = rng.uniform(0, 1), rng.uniform(-1, 1)
                cx = 32 + lateral * 24 * (1 - 0.35 * depth)
                cy = 54 - 36 * depth
                if all(abs(cx - o[5]) > 9 or abs(cy - o[6]) > 7 for o in objects):
                    break
            shape, color, big = int(rng.integers(0, 3)), int(rng.integers(0, 6)), bool(rng.random() < 0.5)
            objects.append((depth, lateral, shape, color, big, cx, cy))
        img = Image.fromarray(floor.copy())
        draw = ImageDraw.Draw(img)
        for depth, lateral, shape, color, big, cx, cy in sorted(objects, key=lambda o: -o[0]):  # far first
            r = (6.5 if big else 4.5) * (1 - 0.45 * depth)
            _draw_clevr_object(draw, CLEVR_SHAPES[shape], CLEVR_COLORS[colors[color]], cx * ss, cy * ss, r * ss)
        out[i] = np.asarray(img.resize((RES, RES), Image.LANCZOS))
        nearest = min(objects, key=lambda o: o[0])
        facts["count"][i] = count
        facts["depth"][i] = nearest[0]
        facts["color"][i] = nearest[3]
        facts["shape"][i] = nearest[2]
        facts["side"][i] = 0 if nearest[1] < -1 / 3 else 2 if nearest[1] > 1 / 3 else 1
    return out, facts


# -- norb (smallNORB-like toys) -----------------------------------------------------------------------

NORB_PIECES = {  # unit cubes (x, y up, z)
    "ell": ((0, 0, 0), (1, 0, 0), (2, 0, 0), (2, 0, 1)),
    "tee": ((0, 0, 0), (1, 0, 0), (2, 0, 0), (1, 0, 1)),
    "tower": ((0, 0, 0), (0, 1, 0), (0, 2, 0), (1, 0, 0)),
    "tripod": ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)),
    "zigzag": ((0, 0, 0), (1, 0, 0), (1, 1, 0), (2, 1, 0)),
}
NORB_ELEVATION = (10.0, 60.0)
NORB_LIGHTS = {"left": (-1.0, 0.6, 0.6), "right": (1.0, 0.6, 0.6), "above": (0.0, 1.0, 0.35)}
_CUBE_FACES = (  # (normal, 4 corners of the unit cube face)
    ((1, 0, 0), ((1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1))),
    ((-1, 0, 0), ((0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0))),
    ((0, 1, 0), ((0, 1, 0), (0, 1, 1), (1, 1, 1), (1, 1, 0))),
    ((0, -1, 0), ((0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1))),
    ((0, 0, 1), ((0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1))),
    ((0, 0, -1), ((0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 0))),
)


@lru_cache(maxsize=None)
def _piece_faces(piece: str) -> tuple[np.ndarray, np.ndarray]:
    """Outer faces of a polycube, centred: corners [F, 4, 3] and normals [F, 3]."""
    cells = set(NORB_PIECES[piece])
    centre = np.mean(np.array(list(cells), float), 0) + 0.5
    corners, normals = [], []
    for cell in cells:
        for normal, quad in _CUBE_FACES:
            if tuple(c + n for c, n in zip(cell, normal)) in cells:
                continue  # a face between two cubes is hidden
            corners.append(np.array(quad, float) + cell - centre)
            normals.append(normal)
    return np.array(corners), np.array(normals, float)


def _render_norb(split: str, seed: int, size: int | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    n = size if size is not None else IMAGE_SETS["norb"].default_train if split == "train" \
        else IMAGE_SETS["norb"].default_test
    rng = np.random.default_rng([seed, 4, SPLITS.index(split)])
    pieces, lights = list(NORB_PIECES), list(NORB_LIGHTS)
    draws = np.array([[rng.integers(0, len(pieces)), rng.uniform(0, 360), rng.uniform(*NORB_ELEVATION),
                       rng.integers(0, len(lights)), rng.uniform(9.0, 11.0), rng.uniform(-3, 3), rng.uniform(-3, 3)]
                      for _ in range(n)]).reshape(n, 7)  # image by image: a prefix is stable
    category, lighting = draws[:, 0].astype(np.int64), draws[:, 3].astype(np.int64)
    azimuth, elevation, zoom, shift = draws[:, 1], draws[:, 2], draws[:, 4], draws[:, 5:7]
    out = np.zeros((n, RES, RES), np.uint8)
    ss = 2
    for i in range(n):
        corners, normals = _piece_faces(pieces[category[i]])
        a, e = math.radians(azimuth[i]), math.radians(elevation[i])
        rot_y = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        rot_x = np.array([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]])
        rot = rot_x @ rot_y  # turn the toy, then tilt the camera down by the elevation
        cam = corners @ rot.T
        nrm = normals @ rot.T
        light = np.array(NORB_LIGHTS[lights[lighting[i]]])
        light = light / np.linalg.norm(light)
        img = Image.new("L", (RES * ss, RES * ss), 70)
        draw = ImageDraw.Draw(img)
        for f in np.argsort(cam[:, :, 2].mean(1)):  # painter's algorithm: far faces first (camera looks along -z)
            if nrm[f, 2] <= 0:
                continue  # back face
            brightness = 0.25 + 0.75 * max(0.0, float(nrm[f] @ light))
            pts = [((32 + shift[i, 0] + p[0] * zoom[i]) * ss, (32 + shift[i, 1] - p[1] * zoom[i]) * ss)
                   for p in cam[f]]
            draw.polygon(pts, fill=int(40 + 200 * brightness), outline=25)
        out[i] = np.asarray(img.resize((RES, RES), Image.LANCZOS))
    return out, {"category": category, "azimuth": azimuth, "elevation": elevation, "lighting": lighting}


# -- the suite -------------------------------------------------------------------------------------------

IMAGE_SETS: dict[str, ImageSetSpec] = {
    "digits": ImageSetSpec("digits", "scikit-learn's bundled handwritten digits (real 8×8 scans)", 1198, 599),
    "sprites": ImageSetSpec("sprites", "dSprites-like single shapes on black", 2000, 1000),
    "clevr": ImageSetSpec("clevr", "Clevr-like scenes of 2-7 objects", 2000, 1000),
    "norb": ImageSetSpec("norb", "smallNORB-like polycube toys under one light", 2000, 1000),
}
RENDERERS = {"digits": _render_digits, "sprites": _render_sprites, "clevr": _render_clevr, "norb": _render_norb}

_DIGITS = tuple(str(d) for d in range(10))
TASKS: dict[str, DemoTask] = {t.name: t for t in (
    DemoTask("digits", "digits", _DIGITS, False, True, "which digit (0-9)",
             lambda f: f["digit"], min_crop_scale=0.6),
    DemoTask("digits_parity", "digits", ("even", "odd"), False, True, "is the digit odd",
             lambda f: f["digit"] % 2, min_crop_scale=0.6),
    DemoTask("digits_ge5", "digits", ("lt5", "ge5"), False, True, "is the digit 5 or more",
             lambda f: (f["digit"] >= 5).astype(np.int64), min_crop_scale=0.6),
    DemoTask("digits_prime", "digits", ("not_prime", "prime"), False, True, "is the digit prime (2, 3, 5, 7)",
             lambda f: PRIMES[f["digit"]].astype(np.int64), min_crop_scale=0.6),
    DemoTask("digits_loops", "digits", ("0", "1", "2"), False, True, "closed loops of the digit (0,4,6,9: 1; 8: 2)",
             lambda f: LOOPS[f["digit"]], min_crop_scale=0.6),
    DemoTask("sprites_shape", "sprites", SPRITE_SHAPES, True, False, "square, ellipse or heart",
             lambda f: f["shape"]),
    DemoTask("sprites_x", "sprites", ("left", "mid_left", "mid_right", "right"), False, False,
             "horizontal position, 4 bins", lambda f: _bins(f["x"], *SPRITE_POS, 4)),
    DemoTask("sprites_y", "sprites", ("top", "mid_top", "mid_bottom", "bottom"), True, False,
             "vertical position, 4 bins", lambda f: _bins(f["y"], *SPRITE_POS, 4)),
    DemoTask("sprites_orientation", "sprites", ("0-30", "30-60", "60-90"), False, False,
             "rotation in degrees, 3 bins", lambda f: _bins(f["orientation"], *SPRITE_ORIENT, 3)),
    DemoTask("sprites_scale", "sprites", ("small", "medium", "large"), True, False, "size, 3 bins",
             lambda f: _bins(f["scale"], *SPRITE_SCALE, 3)),
    DemoTask("clevr_count", "clevr", tuple(str(c) for c in range(CLEVR_COUNTS[0], CLEVR_COUNTS[1] + 1)), True, False,
             "number of objects", lambda f: f["count"] - CLEVR_COUNTS[0]),
    DemoTask("clevr_distance", "clevr", ("near", "mid_near", "mid_far", "far"), True, False,
             "depth of the nearest object, 4 bins", lambda f: np.searchsorted(CLEVR_DISTANCE_EDGES, f["depth"])),
    DemoTask("clevr_color", "clevr", tuple(CLEVR_COLORS), True, False, "colour of the nearest object",
             lambda f: f["color"]),
    DemoTask("clevr_shape", "clevr", CLEVR_SHAPES, True, False, "shape of the nearest object",
             lambda f: f["shape"]),
    DemoTask("clevr_position", "clevr", ("left", "centre", "right"), False, False,
             "which third the nearest object stands in", lambda f: f["side"]),
    DemoTask("norb_category", "norb", tuple(NORB_PIECES), True, True, "which toy", lambda f: f["category"],
             min_crop_scale=0.6),
    DemoTask("norb_azimuth", "norb", ("0-90", "90-180", "180-270", "270-360"), False, False,
             "turn of the toy in degrees, 4 bins", lambda f: _bins(f["azimuth"], 0.0, 360.0, 4)),
    DemoTask("norb_elevation", "norb", ("low", "mid", "high"), True, False, "camera elevation, 3 bins",
             lambda f: _bins(f["elevation"], *NORB_ELEVATION, 3)),
    DemoTask("norb_lighting", "norb", tuple(NORB_LIGHTS), False, True, "where the light comes from",
             lambda f: f["lighting"]),
)}


def task_names() -> list[str]:
    return list(TASKS)


def tasks_of(image_set: str) -> list[str]:
    return [t.name for t in TASKS.values() if t.image_set == image_set]


def _check(split: str, size: int | None) -> None:
    problems = []
    if split not in SPLITS:
        problems.append(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if size is not None and (not isinstance(size, int) or size < 1):
        problems.append(f"size must be a positive integer, got {size!r}")
    if problems:
        raise DataError(problems)


def load_image_set(image_set: str, split: str, *, seed: int = 0, size: int | None = None,
                   tasks: list[str] | None = None) -> ImageSet:
    """One split of an image set, labelled for each of its tasks (or the `tasks` given)."""
    if image_set not in IMAGE_SETS:
        raise DataError(f"unknown image set {image_set!r}; choose one of {', '.join(IMAGE_SETS)}")
    _check(split, size)
    names = tasks_of(image_set) if tasks is None else tasks
    bad = [t for t in names if t not in TASKS or TASKS[t].image_set != image_set]
    if bad:
        raise DataError(f"tasks {bad} do not label the {image_set!r} images; its tasks: {tasks_of(image_set)}")
    images, factors = RENDERERS[image_set](split, seed, size)
    targets = np.stack([TASKS[t].label_fn(factors).astype(np.int64) for t in names], 1)
    hashes = [hashlib.sha256(im.tobytes()).hexdigest() for im in images]
    return ImageSet(
        name=image_set, tasks=tuple(TASKS[t].info() for t in names), targets=targets, item_hashes=hashes,
        arrays=images, source=f"built-in {image_set} ({split}, seed {seed})",
    )


def load_task(task: str, split: str, *, seed: int = 0, size: int | None = None) -> ImageSet:
    """One split of one built-in task."""
    if task not in TASKS:
        raise DataError(f"unknown built-in task {task!r}; choose one of {', '.join(TASKS)}")
    data = load_image_set(TASKS[task].image_set, split, seed=seed, size=size, tasks=[task])
    data.name = task
    return data


def sample_image_png() -> bytes:
    """The README/curl sample: a real test-split '3' from the digits, 64×64 PNG, bytes identical per PIL build.

    `python -m training.demo_tasks` rewrites training/assets/sample.png from it.
    """
    images, target = _digits_pool()
    index = int(_digits_split("test", 0)[np.flatnonzero(target[_digits_split("test", 0)] == 3)[0]])
    image = Image.fromarray(images[index]).resize((64, 64), Image.NEAREST).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


if __name__ == "__main__":
    SAMPLE_IMAGE_PATH.parent.mkdir(parents=True, exist_ok=True)
    SAMPLE_IMAGE_PATH.write_bytes(sample_image_png())
    print(f"wrote {SAMPLE_IMAGE_PATH}")
