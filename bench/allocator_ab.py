"""Where the soak's memory creep came from, measured per unit of work rather than per second:
`python -m bench.allocator_ab --variant clone|slab [--trim-every N] [--batches N] --out FILE`.

The server's classify path without HTTP, so that a busy machine changes how long a run takes but not what it
measures: a decode thread makes uint8 images (as the server's decode thread does) and hands them to the model
thread, which runs the real ClassifyRunner (feature cache, backbone, engine, heads) on batches of 1-8 drawn from a
pool of more distinct images than the cache holds, so the cache stays full and keeps evicting, as in the soak.

- `--variant clone`: the feature cache as it was (every cached entry cloned into tensors of its own, freed on
  eviction);
- `--variant slab`: the feature cache now (one slab allocated once; entries copied into its slots).
- `--trim-every N`: call glibc's malloc_trim(0) every N batches (the server's --malloc-trim-interval-s); 0: never.

Every `--every` batches one JSON line: RSS, and glibc's own view (mallinfo2): bytes in use, bytes free but kept in
its arenas, bytes mmapped. RSS that grows while "in use" does not is the allocator keeping freed pages.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import queue
import random
import threading
import time
from collections import OrderedDict
from types import SimpleNamespace

import torch

from bench.memprobe import mallinfo, rss_mb
from restuning.backbones import create_backbone
from restuning.bypass import BypassConfig, build_bypass
from restuning.engine import MultiTaskEngine
from restuning.preprocess import ImagePreprocessor
from restuning.torch_threads import single_threaded
from server.batcher import Job
from server.feature_cache import FeatureCache
from server.runner import ClassifyRequest, ClassifyRunner


class CloningCache(FeatureCache):
    """The cache before the slab: an LRU of cloned tensors, each entry allocated on put and freed on eviction."""

    def __init__(self, max_bytes: int):
        super().__init__(max_bytes)
        self._items: OrderedDict[str, list[torch.Tensor]] = OrderedDict()
        self._held = 0

    @property
    def size_bytes(self) -> int:
        return self._held

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item

    def put(self, key, features):
        entry = [f.clone() for f in features]
        size = sum(t.numel() * t.element_size() for t in entry)
        with self._lock:
            if self._items.pop(key, None) is not None:
                self._held -= size
            self._items[key] = entry
            self._held += size
            while self._held > self.max_bytes:
                self._items.popitem(last=False)
                self._held -= size


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.allocator_ab")
    p.add_argument("--variant", choices=("clone", "slab"), required=True)
    p.add_argument("--backbone", default="vit_tiny_patch16_224")
    p.add_argument("--batches", type=int, default=3000)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--cache-mb", type=float, default=256)
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--trim-every", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    backbone = create_backbone(args.backbone, weights="random:0")
    engine = MultiTaskEngine(backbone)
    for i in range(args.tasks):
        head = build_bypass(BypassConfig.create(backbone.info, num_classes=5), backbone.embed_dim, seed=i)
        engine.put(f"task{i}", head, tag=SimpleNamespace(labels=[f"c{j}" for j in range(5)], ref=f"task{i}@1"))
    cache = (CloningCache if args.variant == "clone" else FeatureCache)(int(args.cache_mb * 2**20))
    pre = ImagePreprocessor(backbone.info)
    runner = ClassifyRunner(backbone, engine, cache, device="cpu", dtype=torch.float32, normalize=pre.normalize)
    size = backbone.info.image_size
    names = [f"task{i}" for i in range(args.tasks)]
    rng = random.Random(0)
    plan = [[rng.randrange(args.images) for _ in range(rng.randint(1, 8))] for _ in range(args.batches)]
    images: queue.Queue = queue.Queue(maxsize=64)

    def decode() -> None:  # as the server's decode thread: the pixels are allocated here, freed on the model thread
        single_threaded()
        for batch in plan:
            for image in batch:
                pixels = torch.randint(0, 256, (3, *size), dtype=torch.uint8,
                                       generator=torch.Generator().manual_seed(image))
                images.put((image, pixels))

    threading.Thread(target=decode, daemon=True).start()
    trim = ctypes.CDLL("libc.so.6").malloc_trim if args.trim_every else None
    start = time.perf_counter()
    with open(args.out, "w") as out:
        for n, batch in enumerate(plan, 1):
            jobs = []
            for _ in batch:
                image, pixels = images.get()
                tasks = names if rng.random() < 0.5 else rng.sample(names, 3)
                jobs.append(Job(ClassifyRequest(pixels=pixels, cache_key=f"img{image}", tasks=tasks, top_k=3),
                                future=None))
            results = runner.run(jobs)
            assert not any(isinstance(r, Exception) for r in results), results
            del jobs, results
            if trim is not None and n % args.trim_every == 0:
                trim(0)
            if n % args.every == 0:
                row = {"batches": n, "s": round(time.perf_counter() - start, 1), "rss_mb": rss_mb(),
                       "cache_entries": len(cache), **(mallinfo() or {})}
                out.write(json.dumps(row) + "\n")
                out.flush()


if __name__ == "__main__":
    main()
