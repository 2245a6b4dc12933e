"""An LRU of backbone features, bounded in bytes, keyed by a hash of the preprocessed image.

Asking new tasks about a recent image skips the backbone: the frozen features
of an input never change while the backbone stays the same (the server owns
one backbone for its lifetime).
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
    """Thread-safe LRU: key -> [x_0 … x_L] of one image (each [N, D])."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[str, tuple[list[torch.Tensor], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> list[torch.Tensor] | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: str, features: list[torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in features)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (features, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
