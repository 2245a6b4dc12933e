"""Where a process's memory goes, sampled over time: `python -m bench.memprobe --out FILE [options] -m MODULE ARGS…`.

Runs MODULE (e.g. `restune serve …`) in this process after starting a sampler thread that appends one JSON line
to FILE every `--interval` seconds, each splitting the resident memory into parts that can be told apart:

- `python_blocks`: memory blocks Python's allocator has handed out (sys.getallocatedblocks), and
  `traced_since_start_mb`: what Python allocated since tracemalloc started (`--trace-after`) and still holds;
- `torch_mb`: the storages of live torch tensors (found through the garbage collector, each storage counted once);
- `malloc_in_use_mb` / `malloc_free_retained_mb` / `malloc_mmapped_mb`: glibc malloc's own view (mallinfo2 over all
  arenas): bytes handed out, bytes freed but kept by the allocator in its arenas (retained pages), and large
  blocks mapped on their own (torch's big tensors land there);
- `smaps_rss_mb`: RSS by mapping kind from /proc/self/smaps: the main heap, other anonymous memory (malloc's
  thread arenas, Python's object arenas, mmapped blocks), thread stacks, and files (libraries);
- threads, and the top tracemalloc differences (by source line) against the snapshot taken at `--baseline-at`,
  every `--snapshot-every` seconds.

`restune bench soak --server-wrapper "python -m bench.memprobe --out F"` runs the soak's server under it. Tracing
starts late (`--trace-after`, once the server has started) so that start-up is not slowed and the snapshots hold
only what was allocated while serving; a snapshot still stops the process for a moment, so a profiled run's
latency is not representative: use it to find a cause, not to measure.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import runpy
import sys
import threading
import time
import tracemalloc

MIB = 1024 * 1024


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def mallinfo() -> dict | None:
    """glibc's mallinfo2 (summed over every arena); None off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2
    info = fn()
    return {"malloc_in_use_mb": round(info.uordblks / MIB, 2),
            "malloc_free_retained_mb": round(info.fordblks / MIB, 2),
            "malloc_mmapped_mb": round(info.hblkhd / MIB, 2),
            "malloc_arena_mb": round(info.arena / MIB, 2)}


def smaps() -> dict:
    """RSS by mapping kind. A thread stack is an anonymous read-write mapping right above its guard page (a small
    inaccessible mapping); malloc's thread arenas are the other way round (read-write, then the reserved rest)."""
    out = {"heap": 0, "anon": 0, "stacks": 0, "files": 0}
    try:
        text = open("/proc/self/smaps").read()
    except OSError:
        return {}
    prev_end, prev_guard = -1, False
    kind = "anon"
    for line in text.splitlines():
        head = line.split(None, 5)
        if "-" in head[0] and not head[0].endswith(":") and len(head) >= 5:
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            name = head[5] if len(head) > 5 else ""
            perms = head[1]
            if name == "[heap]":
                kind = "heap"
            elif name.startswith("[stack"):
                kind = "stacks"
            elif name.startswith("/"):
                kind = "files"
            elif perms.startswith("rw") and prev_guard and prev_end == lo:
                kind = "stacks"
            else:
                kind = "anon"
            prev_guard = perms.startswith("---") and not name and hi - lo <= 64 * 1024
            prev_end = hi
        elif head[0] == "Rss:":
            out[kind] += int(head[1])
    return {f"smaps_{k}_mb": round(v / 1024, 2) for k, v in out.items()}


def torch_bytes() -> float | None:
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "Tensor"):  # not imported, or still importing
        return None
    seen, total = set(), 0
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor):
            try:
                storage = obj.untyped_storage()
                ptr = storage.data_ptr()
            except Exception:  # meta or sparse tensors have no plain storage
                continue
            if ptr and ptr not in seen and obj.device.type == "cpu":
                seen.add(ptr)
                total += storage.nbytes()
    return round(total / MIB, 2)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / MIB, 2)


class Sampler(threading.Thread):
    def __init__(self, out: str, interval: float, trace_after: float, baseline_at: float, snapshot_every: float,
                 frames: int, top: int, walk_after: float = 60.0):
        super().__init__(name="memprobe", daemon=True)
        self.out = out
        self.walk_after = walk_after
        self.interval = interval
        self.trace_after = trace_after
        self.baseline_at = max(baseline_at, trace_after)
        self.snapshot_every = snapshot_every
        self.frames = frames
        self.top = top
        self.t0 = time.monotonic()
        self.baseline = None
        self.last_snapshot = 0.0

    def _snapshot(self):
        return tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])

    def sample(self) -> dict:
        t = time.monotonic() - self.t0
        if t >= self.trace_after and not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)
        current, _ = tracemalloc.get_traced_memory()
        row = {"t_s": round(t, 2), "rss_mb": rss_mb(), "python_blocks": sys.getallocatedblocks(),
               "traced_since_start_mb": round(current / MIB, 2), "threads": threading.active_count(),
               "os_threads": len(os.listdir("/proc/self/task")), "gc_objects": len(gc.get_objects())}
        # walking the garbage collector's objects while the main thread still imports modules can meet a tuple
        # being built (CPython then fails the main thread with SystemError): walk only once start-up is over
        row["torch_mb"] = torch_bytes() if t >= self.walk_after else None
        row.update(mallinfo() or {})
        row.update(smaps())
        if tracemalloc.is_tracing() and t >= self.baseline_at:
            if self.baseline is None:
                self.baseline, self.last_snapshot = self._snapshot(), t
            elif t - self.last_snapshot >= self.snapshot_every:
                self.last_snapshot = t
                diffs = self._snapshot().compare_to(self.baseline, "lineno" if self.frames == 1 else "traceback")
                row["top_growth"] = [{"where": [f"{f.filename}:{f.lineno}" for f in d.traceback][:self.frames],
                                      "size_diff_kb": round(d.size_diff / 1024, 1), "count_diff": d.count_diff}
                                     for d in diffs[: self.top]]
        return row

    def run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                row = self.sample()
            except Exception as exc:  # a probe must never take the process down
                row = {"error": f"{type(exc).__name__}: {exc}"}
            with open(self.out, "a") as f:
                f.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "-m" not in argv:
        raise SystemExit("usage: python -m bench.memprobe --out FILE [--interval S] [--baseline-at S] -m MODULE ARGS…")
    split = argv.index("-m")
    p = argparse.ArgumentParser(prog="python -m bench.memprobe")
    p.add_argument("--out", required=True, help="JSON lines, one sample each")
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--trace-after", type=float, default=60.0, help="seconds in: tracemalloc starts")
    p.add_argument("--walk-after", type=float, default=60.0,
                   help="seconds in: live torch tensors start being counted (a walk over every Python object)")
    p.add_argument("--baseline-at", type=float, default=120.0, help="seconds in: the snapshot to diff against")
    p.add_argument("--snapshot-every", type=float, default=120.0, help="seconds between snapshot diffs")
    p.add_argument("--frames", type=int, default=1, help="traceback depth tracemalloc keeps")
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args(argv[:split])
    module, rest = argv[split + 1], argv[split + 2:]
    Sampler(args.out, args.interval, args.trace_after, args.baseline_at, args.snapshot_every, args.frames,
            args.top, args.walk_after).start()
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
