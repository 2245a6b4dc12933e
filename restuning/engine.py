"""Multi-task fan-out: one backbone pass, then the bypass heads each request asked for.

Heads are grouped by (horizontal activation, vertical activation, tapped layers, pooling); a group keeps its
heads' weights in slots (`kernels.slots`): adding, replacing or removing a head writes one slot, so a change
costs the same with 5 heads or 5,000. Each group reads only the token positions its pooling needs:
class-token heads touch one token per layer.

Two ways to run:
- `run(tokens, names)`: every image through the same heads. The heads' slots are gathered into the stacked
  layout of the fused fan-out kernels (cached per head set), where the horizontal down-projections of all
  heads are one GEMM over the shared tokens.
- `run_routed(tokens, tasks_per_image)`: image i through its own heads only (per-request routing): the batch
  computes exactly the (image, task) pairs asked for, never the union, each pair with its own slot.
  When every image asks for the same heads this is `run`.

Readers never see a half-written slot and a batch finishes on the heads it started with: a batch resolves
its heads to slots once, inside `reading()`; a new version of a head is written to a free slot and then
published, and the slot it replaced is reused only after every batch that started before the change has
finished.
"""
from __future__ import annotations

import itertools
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from restuning import kernels
from restuning.backbones.base import Backbone
from restuning.bypass import ResTuningBypass
from restuning.errors import ConfigError, InputError
from restuning.kernels import slots
from restuning.kernels.slots import SlotLayout, SlotTensors, covering, layout_of
from restuning.kernels.weights import GroupWeights


def group_key(head: ResTuningBypass) -> tuple:
    """Heads with the same key share a group (and its slots); sizes are padded within it."""
    return slots.group_key(layout_of(head, head.embed_dim))


@dataclass(frozen=True)
class Placement:
    """Where one head's weights live."""

    group: "SlotGroup"
    slot: int
    num_classes: int
    content: int  # unique per write: identifies the weights in this slot for caches
    tag: object = None  # the caller's note about these weights (a server keeps the tuner's version and labels)


@dataclass(frozen=True)
class PackedHead:
    """One head's slot content copied out of the engine (a host tier keeps these): putting it back is a copy of
    a few tensors, without building or packing a module again."""

    layout: SlotLayout
    content: dict[str, torch.Tensor]
    num_classes: int
    tag: object = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.content.values())


@dataclass
class SlotGroup:
    """The slots of one group of heads, and the slots waiting until no reader can still use them."""

    tensors: SlotTensors
    free: list[int] = field(default_factory=list)
    retired: list[tuple[int, int]] = field(default_factory=list)  # (generation it was retired at, slot)
    used: int = 0

    @property
    def layout(self) -> SlotLayout:
        return self.tensors.layout


class Reading:
    """A batch's consistent view: the heads it resolves now are the ones it computes with."""

    def __init__(self, engine: "MultiTaskEngine"):
        self.engine = engine

    def resolve(self, names: Sequence[str]) -> list[tuple[SlotTensors, Placement]]:
        where = self.engine._where
        out = []
        for name in names:
            placement = where.get(name)
            if placement is None:
                raise InputError(f"unknown tasks {[name]}; loaded: {len(where)} tuners")
            out.append((placement.group.tensors, placement))
        return out


class MultiTaskEngine:
    """Evaluates many bypass heads on one set of captured backbone features."""

    def __init__(
        self,
        backbone: Backbone,
        heads: Mapping[str, ResTuningBypass] | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        subset_cache_size: int = 32,
        kernel_backend: str | None = None,
        initial_capacity: int = 4,
    ):
        """kernel_backend: "auto" | "torch" | "triton", or None to follow `kernels.set_backend` (see kernels)."""
        self.kernel_backend = kernels.check_backend(kernel_backend) if kernel_backend is not None else None
        self.backbone = backbone
        param = next(backbone.parameters())
        self.device = torch.device(device) if device is not None else param.device
        self.dtype = dtype if dtype is not None else param.dtype
        self.initial_capacity = initial_capacity
        self._groups: dict[tuple, SlotGroup] = {}
        self._where: dict[str, Placement] = {}
        self._lock = threading.Lock()  # serialises writers; readers never wait for a write
        self._readers: Counter[int] = Counter()  # generation a running batch started at -> how many
        self._readers_lock = threading.Lock()
        self._generation = 0
        self._content = itertools.count(1)
        self._dense_cache: OrderedDict[tuple, GroupWeights] = OrderedDict()
        self._dense_cache_size = subset_cache_size
        for name, head in (heads or {}).items():
            self.put(name, head)

    # -- the head set -------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    @property
    def groups(self) -> list[SlotGroup]:
        return list(self._groups.values())

    def slot_bytes(self, name: str) -> int:
        """Bytes one head's slot takes in its group (padding included)."""
        return self._where[name].group.tensors.nbytes_per_slot()

    def _check(self, name: str, head: ResTuningBypass) -> None:
        if head.embed_dim != self.backbone.embed_dim:
            raise ConfigError(f"head {name!r} expects embed dim {head.embed_dim}, the backbone has "
                              f"{self.backbone.embed_dim}")
        if max(head.config.layers) > self.backbone.depth:
            raise ConfigError(f"head {name!r} taps block {max(head.config.layers)}; the backbone has "
                              f"{self.backbone.depth}")

    def put(self, name: str, head: ResTuningBypass, *, tag: object = None) -> None:
        """Add `name`, or replace its head: one slot is written, then published. `tag` travels with these weights:
        `run_routed(…, tags=True)` returns the tag of the weights each result was computed with."""
        self._check(name, head)
        layout = layout_of(head, self.backbone.embed_dim)
        key = slots.group_key(layout)
        with self._lock:
            group = self._groups.get(key)
            if group is None:
                group = SlotGroup(SlotTensors.empty(layout, self.initial_capacity, device=self.device,
                                                   dtype=self.dtype))
                group.free = list(range(self.initial_capacity - 1, -1, -1))
                self._groups[key] = group
            slot = self._allocate(group, layout)
            group.tensors.write(slot, head)
            old = self._where.get(name)
            self._where[name] = Placement(group, slot, head.config.num_classes, next(self._content), tag)
            self._retire(old)

    def export(self, name: str, device: str | torch.device = "cpu") -> PackedHead:
        """A copy of `name`'s slot, to `put_packed` back later (the engine keeps its own)."""
        with self._lock:
            placement = self._where[name]
            tensors = placement.group.tensors
            return PackedHead(tensors.layout, tensors.read(placement.slot, device), placement.num_classes,
                              placement.tag)

    def pack(self, head: ResTuningBypass, *, tag: object = None, device: str | torch.device = "cpu") -> PackedHead | None:
        """`head` packed as its group's slots hold it now, without placing it: what `put_packed` takes (a host
        tier fills itself this way at start). None when it has no group yet, or needs a larger layout than its
        group has: it is built and `put` when it is wanted."""
        self._check("(packed)", head)
        layout = layout_of(head, self.backbone.embed_dim)
        with self._lock:
            group = self._groups.get(slots.group_key(layout))
            if group is None or covering(group.layout, layout) != group.layout:
                return None
            target = group.layout
        one = SlotTensors.empty(target, 1, device=device, dtype=self.dtype)
        one.write(0, head)
        return PackedHead(target, one.read(0, device), head.config.num_classes, tag)

    def put_packed(self, name: str, packed: PackedHead, *, tag: object = None) -> bool:
        """Add `name` from an exported slot: one slot is written (copies only), then published. False, and nothing
        changed, when its group has been laid out anew since the export (the caller builds it again)."""
        with self._lock:
            group = self._groups.get(slots.group_key(packed.layout))
            if group is None or group.layout != packed.layout:
                return False
            slot = self._allocate(group, packed.layout)  # the group's own layout: at most more capacity
            group.tensors.write_copy(slot, packed.content)
            old = self._where.get(name)
            self._where[name] = Placement(group, slot, packed.num_classes, next(self._content), tag)
            self._retire(old)
            return True

    def remove(self, name: str) -> None:
        with self._lock:
            self._retire(self._where.pop(name, None))

    def _retire(self, placement: Placement | None) -> None:
        """A slot nobody new will read; reused once the batches that started before now have finished."""
        self._generation += 1
        if placement is not None:
            placement.group.retired.append((self._generation, placement.slot))
            placement.group.used -= 1

    def _allocate(self, group: SlotGroup, layout: SlotLayout) -> int:
        oldest = self._oldest_reader()
        still_read = []
        for generation, slot in group.retired:
            if oldest is None or oldest >= generation:  # every running batch started after it was retired
                group.free.append(slot)
            else:
                still_read.append((generation, slot))
        group.retired = still_read
        needed = covering(group.layout, layout)
        if not group.free or needed != group.layout:
            old_capacity = group.tensors.capacity
            capacity = old_capacity * 2 if not group.free else old_capacity
            # a new tensor set: readers keep the old one (still intact), writers use the new one
            group.tensors = group.tensors.relaid(needed, capacity)
            group.free.extend(range(capacity - 1, old_capacity - 1, -1))
            self._dense_cache.clear()
        group.used += 1
        return group.free.pop()

    # -- readers ------------------------------------------------------------------------------------------

    def _oldest_reader(self) -> int | None:
        with self._readers_lock:
            return min(self._readers) if self._readers else None

    @contextmanager
    def reading(self) -> Iterator[Reading]:
        """Resolve a batch's heads inside this block; their slots stay as they are until it ends."""
        with self._readers_lock:
            generation = self._generation
            self._readers[generation] += 1
        try:
            yield Reading(self)
        finally:
            with self._readers_lock:
                self._readers[generation] -= 1
                if not self._readers[generation]:
                    del self._readers[generation]

    # -- compute ------------------------------------------------------------------------------------------

    def _dense(self, resolved: list[tuple[SlotTensors, Placement]], names: list[str]) -> GroupWeights:
        key = tuple((id(t), p.slot, p.content) for t, p in resolved)
        cached = self._dense_cache.get(key)
        if cached is not None:
            self._dense_cache.move_to_end(key)
            return cached
        tensors = resolved[0][0]
        dense = tensors.dense([p.slot for _, p in resolved], names, [p.num_classes for _, p in resolved])
        self._dense_cache[key] = dense
        if len(self._dense_cache) > self._dense_cache_size:
            self._dense_cache.popitem(last=False)
        return dense

    def _selected(self, tokens: Sequence[torch.Tensor], pooling: str) -> list[torch.Tensor]:
        positions = self.backbone.token_positions(pooling)
        return [t[:, positions].to(self.dtype) for t in tokens]

    def _check_tokens(self, tokens: Sequence[torch.Tensor]) -> None:
        if len(tokens) != self.backbone.depth + 1:
            raise InputError(f"expected {self.backbone.depth + 1} feature tensors (x_0 … x_L), got {len(tokens)}")

    @torch.inference_mode()
    def run(self, tokens: Sequence[torch.Tensor], names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Logits per task from captured features [x_0 … x_L] (each [B, N, D]) for every image; {name: [B, C]}."""
        self._check_tokens(tokens)
        with self.reading() as read:
            wanted = list(dict.fromkeys(self.names if names is None else names))
            unknown = [n for n in wanted if n not in self._where]
            if unknown:
                raise InputError(f"unknown tasks {unknown}; loaded: {sorted(self._where)}")
            return self._run_dense(tokens, wanted, dict(zip(wanted, read.resolve(wanted))))

    def _run_dense(self, tokens, wanted: list[str], resolved: dict) -> dict[str, torch.Tensor]:
        by_group: dict[int, list[str]] = OrderedDict()
        for name in wanted:
            by_group.setdefault(id(resolved[name][0]), []).append(name)
        out: dict[str, torch.Tensor] = {}
        for group_names in by_group.values():
            dense = self._dense([resolved[n] for n in group_names], group_names)
            selected = self._selected(tokens, dense.pooling)
            logits = kernels.group_logits(selected, dense, self.backbone, backend=self.kernel_backend)
            for i, name in enumerate(group_names):
                out[name] = logits[:, i, : dense.num_classes[i]]
        return {n: out[n] for n in wanted}

    @torch.inference_mode()
    def run_routed(self, tokens: Sequence[torch.Tensor], tasks_per_image: Sequence[Sequence[str]], *,
                   tags: bool = False) -> list[dict[str, torch.Tensor]]:
        """Image i through its own tasks only: [{task: logits [C]}] per image, in each image's task order;
        with `tags`, {task: (logits, tag of the weights used)}."""
        self._check_tokens(tokens)
        if len(tasks_per_image) != tokens[0].shape[0]:
            raise InputError(f"{len(tasks_per_image)} task lists for {tokens[0].shape[0]} images")
        with self.reading() as read:
            first = list(tasks_per_image[0]) if tasks_per_image else []
            if all(list(t) == first for t in tasks_per_image):  # the same heads for every image: stacked layout
                resolved = dict(zip(first, read.resolve(first)))
                logits = self._run_dense(tokens, first, resolved)
                return [{name: (logits[name][i], resolved[name][1].tag) if tags else logits[name][i]
                         for name in first} for i in range(len(tasks_per_image))]
            pairs: dict[int, list[tuple[int, str, Placement]]] = OrderedDict()
            tensors_of: dict[int, SlotTensors] = {}
            for i, tasks in enumerate(tasks_per_image):
                for name, (tensors, placement) in zip(tasks, read.resolve(list(tasks))):
                    pairs.setdefault(id(tensors), []).append((i, name, placement))
                    tensors_of[id(tensors)] = tensors
            out: list[dict[str, torch.Tensor]] = [{} for _ in tasks_per_image]
            for key, group_pairs in pairs.items():
                tensors = tensors_of[key]
                image = torch.tensor([i for i, _, _ in group_pairs], device=self.device)
                slot = torch.tensor([p.slot for _, _, p in group_pairs], device=self.device)
                selected = self._selected(tokens, tensors.layout.pooling)
                logits = kernels.routed_group_logits(selected, image, slot, tensors, self.backbone,
                                                     backend=self.kernel_backend)  # [P, C]
                for row, (i, name, placement) in enumerate(group_pairs):
                    result = logits[row, : placement.num_classes]
                    out[i][name] = (result, placement.tag) if tags else result
        return [{name: o[name] for name in tasks} for o, tasks in zip(out, tasks_per_image)]

    def classify(self, images: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Backbone once, then every requested head."""
        return self.run(self.backbone.forward_features(images), names)
