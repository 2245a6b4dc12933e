"""An LRU of backbone features, bounded in bytes, keyed by a hash of the preprocessed image.

Asking new tasks about a recent image skips the backbone: the frozen features
of an input never change while the backbone stays the same (the server owns
one backbone for its lifetime).

The features live in one preallocated slab of equal slots ([slots, L + 1, N, D]: every image is resized
to the backbone's input, so every entry has the same shape), allocated on the first put. A put copies
into a slot, an eviction frees one: the cache never allocates or frees memory once it exists. Cloning each
entry into a tensor of its own, as this cache did before, made the model thread allocate and free ~2 MB
per cache miss for as long as the server ran, interleaved with the batches' short-lived tensors; glibc's
arenas kept those freed pages, and RSS crept up for as long as the load lasted (docs/reliability.md).
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch


def content_key(pixels: torch.Tensor) -> str:
    """sha256 of the preprocessed input [3, H, W]: equal pixels, equal key."""
    data = pixels.detach().to("cpu").contiguous()
    digest = hashlib.sha256(str((tuple(data.shape), str(data.dtype))).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """key -> [x_0 … x_L] of one image (each [N, D]), least recently used evicted first.

    `get` returns views into the slab, valid until the next `put`: read them (copy, stack) before putting.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._slab: torch.Tensor | None = None  # [capacity, L + 1, N, D]
        self._slots: OrderedDict[str, int] = OrderedDict()  # key -> slot, least recently used first
        self._free: list[int] = []
        self._entry_bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def size_bytes(self) -> int:
        """Bytes of the entries held (the slab itself is reserved once, and filled as entries come)."""
        return len(self._slots) * self._entry_bytes

    @property
    def capacity(self) -> int:
        return 0 if self._slab is None else self._slab.shape[0]

    def __len__(self) -> int:
        return len(self._slots)

    def get(self, key: str) -> list[torch.Tensor] | None:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                self.misses += 1
                return None
            self._slots.move_to_end(key)
            self.hits += 1
            return list(self._slab[slot].unbind(0))

    def _allocate(self, features: list[torch.Tensor]) -> bool:
        first = features[0]
        if any(f.shape != first.shape or f.dtype != first.dtype for f in features):
            return False  # layers of different shapes do not stack into one slab
        self._entry_bytes = len(features) * first.numel() * first.element_size()
        capacity = self.max_bytes // self._entry_bytes
        if capacity == 0:
            return False
        self._slab = torch.empty((capacity, len(features), *first.shape), dtype=first.dtype, device=first.device)
        self._free = list(range(capacity - 1, -1, -1))
        return True

    def put(self, key: str, features: list[torch.Tensor]) -> None:
        """Copy `features` (each [N, D]) into a slot: the caller's tensors are not kept."""
        if not self.max_bytes or not features:
            return
        with self._lock:
            if self._slab is None and not self._allocate(features):
                self.max_bytes = 0  # nothing fits: stop hashing and looking
                return
            entry = self._slab.shape[1:]
            if len(features) != entry[0] or features[0].shape != entry[1:] or features[0].dtype != self._slab.dtype:
                return
            slot = self._slots.pop(key, None)
            if slot is None:
                slot = self._free.pop() if self._free else self._slots.popitem(last=False)[1]
            for layer, tensor in enumerate(features):
                self._slab[slot, layer].copy_(tensor)
            self._slots[key] = slot

    def clear(self) -> None:
        with self._lock:
            self._free.extend(self._slots.values())
            self._slots.clear()
