"""The training feature cache: the frozen backbone runs once per augmented view, epochs train from the cache.

Because the backbone is frozen (bypass, linear probing), x_0 … x_L of an image in a given view never
change. The cache extracts them once per view, keeping only what the heads read:
- the layers they tap (x_0 and each tapped block output; linear probing reads x_0 and x_L only), and
- the token positions their pooling reads: one class token per layer for class-token heads, every
  patch token for mean-pooled heads (every Res-Tuner is token-wise, so nothing else is needed).

A cache holds `views` augmented views of the training images (epoch e trains on view e mod views) and
one un-augmented view of the validation/test images. It lives in memory (a torch tensor per view) or,
with a directory, in `.npy` memory maps (plain arrays, never pickles) that a later run with the same
key reuses. Its size is bounded before anything is extracted.

Under torchrun every rank extracts every world-th image; in memory the ranks then sum their disjoint
shards (all-reduce), on disk they write their rows into the same files.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from restuning.backbones.base import Backbone
from training.augment import ViewDataset
from training.distributed import DistInfo
from training.train_config import CACHE_DTYPE_NAMES

log = logging.getLogger(__name__)

CACHE_DTYPES = {name: getattr(torch, name) for name in CACHE_DTYPE_NAMES}
_NP_DTYPES = {name: getattr(np, name) for name in CACHE_DTYPE_NAMES}
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class CacheLayout:
    layers: tuple[int, ...]  # x-indices kept, 0 … L
    positions: tuple[int, int]  # token slice [start, stop)
    embed_dim: int
    dtype: str = "float32"

    @property
    def num_tokens(self) -> int:
        return self.positions[1] - self.positions[0]

    @property
    def bytes_per_image(self) -> int:
        return len(self.layers) * self.num_tokens * self.embed_dim * torch.finfo(CACHE_DTYPES[self.dtype]).bits // 8

    def to_json(self) -> dict:
        return {"layers": list(self.layers), "positions": list(self.positions), "embed_dim": self.embed_dim,
                "dtype": self.dtype}


class FeatureCache:
    """Features of `num_images` images: views[v] is [N, len(layers), tokens, D]; `get` returns per-layer tensors."""

    def __init__(self, layout: CacheLayout, num_images: int, views: list, arrays: dict):
        self.layout = layout
        self.num_images = num_images
        self.views = views  # view ids: ints for augmented views, None for the whole image
        self._arrays = arrays  # view id -> torch.Tensor or np.memmap

    @property
    def nbytes(self) -> int:
        return len(self.views) * self.num_images * self.layout.bytes_per_image

    def get(self, indices, view, device: torch.device | str = "cpu",
            layers: tuple[int, ...] | None = None) -> list[torch.Tensor | None]:
        """[x_0 … x_L] for the images `indices` in `view`; layers not kept (or not asked for) are None."""
        wanted = self.layout.layers if layers is None else layers
        missing = sorted(set(wanted) - set(self.layout.layers))
        if missing:
            raise KeyError(f"the feature cache holds layers {self.layout.layers}, not {missing}")
        columns = [self.layout.layers.index(layer) for layer in wanted]
        every = columns == list(range(len(self.layout.layers)))
        array = self._arrays[view]
        if isinstance(array, torch.Tensor):
            rows = array[torch.as_tensor(indices, dtype=torch.long)]
            rows = rows if every else rows[:, columns]
        else:  # read only the rows and layers needed from the memory map
            idx = np.asarray(indices, dtype=np.int64)
            rows = torch.from_numpy(np.ascontiguousarray(array[idx] if every else array[np.ix_(idx, columns)]))
        rows = rows.to(device=device, dtype=torch.float32, non_blocking=True)
        out: list[torch.Tensor | None] = [None] * (max(self.layout.layers) + 1)
        for j, layer in enumerate(wanted):
            out[layer] = rows[:, j]
        return out


def select_tokens(features: list[torch.Tensor], layers: tuple[int, ...], positions: slice) -> list[torch.Tensor | None]:
    """The layers and token positions heads read, from a full backbone pass (what the cache stores).

    Copies, not views: a view would keep every layer's full [B, N, D] tensor alive through the step.
    """
    out: list[torch.Tensor | None] = [None] * (max(layers) + 1)
    for layer in layers:
        out[layer] = features[layer][:, positions].contiguous()
    return out


def cache_key(backbone: Backbone, data_fingerprint: str, layout: CacheLayout, augmentation: dict | None,
              split: str) -> str:
    payload = {"backbone": backbone.fingerprint(), "data": data_fingerprint, "layout": layout.to_json(),
               "augmentation": augmentation, "split": split, "version": 1}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _view_name(view) -> str:
    return "whole" if view is None else f"view{view}"


def _loader(dataset: ViewDataset, rows: np.ndarray, batch_size: int, workers: int):
    subset = torch.utils.data.Subset(dataset, rows.tolist())
    return torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers)


def build_feature_cache(
    backbone: Backbone,
    dataset: ViewDataset,
    layout: CacheLayout,
    views: list,
    *,
    batch_size: int,
    device: torch.device | str,
    dist: DistInfo,
    workers: int = 0,
    directory: str | Path | None = None,
    key: str | None = None,
    progress: bool = True,
    desc: str = "features",
) -> FeatureCache:
    """Extract (or reuse from `directory`) the features of every image in every view."""
    n = len(dataset)
    shape = (n, len(layout.layers), layout.num_tokens, layout.embed_dim)
    positions = slice(*layout.positions)
    root = None
    manifest: dict = {}
    if directory is not None:
        root = Path(directory) / (key or "cache")[:24]
        if dist.is_main:
            root.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        if (root / MANIFEST).is_file():
            manifest = json.loads((root / MANIFEST).read_text())
            if manifest.get("key") != key or manifest.get("shape") != list(shape):
                manifest = {}
    done = set(manifest.get("views", [])) if manifest else set()
    arrays: dict = {}
    rows = np.arange(dist.rank, n, dist.world_size)  # this rank's shard
    for view in views:
        name = _view_name(view)
        if root is not None and name in done:
            arrays[view] = np.load(root / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            log.info("feature cache: reusing %s/%s.npy", root, name)
            continue
        if root is None:
            target = torch.zeros(shape, dtype=CACHE_DTYPES[layout.dtype])
        else:
            path = root / f"{name}.npy"
            if dist.is_main:
                np.lib.format.open_memmap(path, mode="w+", dtype=_NP_DTYPES[layout.dtype], shape=shape).flush()
            dist.barrier()
            target = np.load(path, mmap_mode="r+", allow_pickle=False)
        dataset.view = view
        bar = tqdm(total=len(rows), desc=f"{desc} ({name})", unit="img", disable=not (progress and dist.is_main),
                   leave=False)
        for images, index in _loader(dataset, rows, batch_size, workers):
            feats = backbone.forward_features(images.to(device))
            chunk = torch.stack([feats[layer][:, positions] for layer in layout.layers], dim=1)
            chunk = chunk.to("cpu", CACHE_DTYPES[layout.dtype])
            if isinstance(target, torch.Tensor):
                target[index] = chunk
            else:
                target[index.numpy()] = chunk.numpy()
            bar.update(len(index))
        bar.close()
        dataset.view = None
        if isinstance(target, torch.Tensor):
            if dist.world_size > 1:
                dist.all_reduce_sum(target)  # disjoint shards, zeros elsewhere: the sum is the whole cache
            arrays[view] = target
        else:
            target.flush()
            del target
            dist.barrier()
            arrays[view] = np.load(root / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            if dist.is_main:
                done.add(name)
                _write_manifest(root, {"key": key, "shape": list(shape), "layout": layout.to_json(),
                                       "views": sorted(done)})
    return FeatureCache(layout, n, list(views), arrays)


def _write_manifest(root: Path, manifest: dict) -> None:
    tmp = root / f".{MANIFEST}.{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, root / MANIFEST)


def plan_views(requested: int, augmented: bool, bytes_per_view: int, fixed_bytes: int, max_bytes: int) -> int:
    """How many training views fit: `requested` (1 without augmentation), fewer when over the budget, or 0."""
    wanted = requested if augmented else 1
    if bytes_per_view <= 0:
        return wanted
    fit = (max_bytes - fixed_bytes) // bytes_per_view
    return int(max(0, min(wanted, fit)))
