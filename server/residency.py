"""The two memory tiers a replica keeps tuners in, each under a byte budget.

- `ResidentSet`: tuners placed for serving (classification heads in the engine's slots, style tuners on the
  device), in least-recently-used order. Pinned tuners are never evicted, nor are tuners that a request in
  flight holds (a lease): a batch never loses a head it was promised.
- `HostCache`: tuners that are not resident, so that a miss skips the store and the validation: validated
  artifacts (prefetched after a change) and what was kept of tuners evicted for room (a head's packed slot, put
  back with a copy). A tuner is in one tier or the other, never both (a resident tuner costs its weights once).

The store stays the source of truth; both tiers are caches of it.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass


class ResidencyError(Exception):
    """A tuner cannot be made resident now (every resident tuner is pinned or in use, or a load timed out)."""


@dataclass(frozen=True)
class LoadedTuner:
    name: str
    version: int
    kind: str
    labels: tuple[str, ...]
    created_at: str
    metrics: dict
    nbytes: int  # what it takes where it is placed (its engine slot, or its module on the device)
    module: object | None = None  # the placed module, for kinds whose requests take modules (style tuners)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class ResidentSet:
    """Resident tuners in LRU order under `budget` bytes (None: no limit); thread-safe."""

    def __init__(self, budget: int | None):
        self.budget = budget
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)  # a lease ended: room may be made now
        self._entries: OrderedDict[str, LoadedTuner] = OrderedDict()
        self.nbytes = 0
        self.reserved = 0  # room made for loads in flight (they count before they land)
        self.pinned: set[str] = set()
        self._leases: Counter[str] = Counter()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> LoadedTuner | None:
        return self._entries.get(name)

    def items(self) -> list[LoadedTuner]:
        with self._lock:
            return list(self._entries.values())

    def lease_all(self, names: Iterable[str]) -> bool:
        """Hold every one of `names` (used now: most recent, not evictable) if all are resident; else hold none:
        a request that waits for a load must not keep others' tuners from being evicted meanwhile."""
        names = list(names)
        with self._lock:
            if any(name not in self._entries for name in names):
                return False
            for name in names:
                self._entries.move_to_end(name)
                self._leases[name] += 1
            return True

    def release(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                self._leases[name] -= 1
                if self._leases[name] <= 0:
                    del self._leases[name]
            self._released.notify_all()

    def leased(self) -> list[str]:
        with self._lock:
            return list(self._leases)

    def room_for(self, nbytes: int, *, keep: str | None = None, deadline: float | None = None) -> list[LoadedTuner]:
        """Evict least-recently-used tuners (not pinned, not leased, not `keep`) until `nbytes` more fit, waiting
        for leases to end until `deadline` (time.monotonic) when that is not enough; returns the evicted (the
        caller takes them out of where they are placed) and reserves the room: `add(…, reserved=nbytes)` or
        `unreserve(nbytes)` settles it. ResidencyError if there is no room in time."""
        with self._lock:
            if self.budget is None:
                self.reserved += nbytes
                return []
            if nbytes > self.budget:
                raise ResidencyError(f"a tuner of {nbytes:,} bytes does not fit the resident budget of "
                                     f"{self.budget:,} bytes at all (--resident-mb)")
            evicted = []
            while True:
                for name in list(self._entries):
                    if self.nbytes + self.reserved + nbytes <= self.budget:
                        break
                    if name in self.pinned or name in self._leases or name == keep:
                        continue
                    gone = self._entries.pop(name)
                    self.nbytes -= gone.nbytes
                    evicted.append(gone)
                if self.nbytes + self.reserved + nbytes <= self.budget:
                    self.reserved += nbytes
                    return evicted
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ResidencyError(
                        f"the resident set is full ({self.nbytes:,} of {self.budget:,} bytes) and every resident "
                        f"tuner is pinned ({len(self.pinned)}) or in use ({len(self._leases)}); retry")
                self._released.wait(timeout=0.05 if left is None else min(0.05, left))

    def unreserve(self, nbytes: int) -> None:
        with self._lock:
            self.reserved -= nbytes
            self._released.notify_all()

    def add(self, tuner: LoadedTuner, *, reserved: int = 0) -> LoadedTuner | None:
        """Make `tuner` resident (most recent), settling the room reserved for it; returns the version it
        replaced, if any."""
        with self._lock:
            self.reserved -= reserved
            old = self._entries.pop(tuner.name, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._entries[tuner.name] = tuner
            self.nbytes += tuner.nbytes
            return old

    def remove(self, name: str) -> LoadedTuner | None:
        with self._lock:
            gone = self._entries.pop(name, None)
            if gone is not None:
                self.nbytes -= gone.nbytes
            return gone


class HostCache:
    """Non-resident tuners in LRU order under `budget` bytes (thread-safe): validated artifacts (prefetched after a
    change), and what was kept of tuners evicted for room (a classification head's packed slot)."""

    def __init__(self, budget: int):
        self.budget = budget
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[int, object, int]] = OrderedDict()  # name -> (version, entry, bytes)
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, name: str, version: int) -> bool:
        with self._lock:
            entry = self._entries.get(name)
            return entry is not None and entry[0] == version

    def take_if(self, name: str, version: int, kind: type):
        """What is cached of exactly this version, if it is a `kind` (a validated artifact, or what was kept of an
        evicted tuner), removed from the cache (it is about to be resident)."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry[0] != version or not isinstance(entry[1], kind):
                return None
            del self._entries[name]
            self.nbytes -= entry[2]
            return entry[1]

    def put(self, name: str, version: int, artifact, nbytes: int, *, least_recent: bool = False) -> None:
        """Keep `artifact` as the most recently used entry (`least_recent`: the first to go, as a start-up fill
        that goes newest first puts its entries)."""
        with self._lock:
            self._discard(name)
            if nbytes > self.budget:
                return
            while self.nbytes + nbytes > self.budget and self._entries:
                _, (_, _, size) = self._entries.popitem(last=False)
                self.nbytes -= size
            self._entries[name] = (version, artifact, nbytes)
            if least_recent:
                self._entries.move_to_end(name, last=False)
            self.nbytes += nbytes

    def discard(self, name: str) -> None:
        with self._lock:
            self._discard(name)

    def _discard(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self.nbytes -= entry[2]
