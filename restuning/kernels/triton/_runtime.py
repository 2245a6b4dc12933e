"""Where the Triton kernels come from and how they are launched.

`kernel_module(interpret)` loads `_jit.py` compiled or interpreted. Triton decides this
when `@triton.jit` runs (it reads TRITON_INTERPRET at decoration time), so each mode gets
its own copy of the module, built under a scoped setting that is restored afterwards.
Which copy a launch uses is read from TRITON_INTERPRET at launch time: tests can turn
the interpreter on for one test without leaking it into the rest of the process.

Triton's own standard library (tl.sum, tl.zeros, …) is decorated once, when `triton` is
first imported; the kernels call only builtins so that either copy works whatever that
setting was, except that compiled kernels need the standard combine functions compiled:
this module imports Triton eagerly (normally before anyone sets TRITON_INTERPRET for a
while), and `kernel_module(False)` raises a clear error if Triton came up interpreted.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from restuning.errors import ConfigError

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_lock = threading.Lock()
_modules: dict[bool, ModuleType] = {}
_MISSING = object()

try:  # eagerly, see the module docstring
    import triton as _triton  # noqa: F401

    _IMPORT_ERROR: str | None = None
except Exception as exc:  # ImportError, or a broken install raising something else
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def triton_importable() -> bool:
    return _IMPORT_ERROR is None


def interpreting() -> bool:
    """True when Triton's interpreter is on now (TRITON_INTERPRET, read at every launch)."""
    import triton  # only CUDA builds of torch bring triton; triton_importable() asks first

    knobs = getattr(triton, "knobs", None)  # Triton ≥ 3.4; older ones read the variable directly
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def kernel_module(interpret: bool) -> ModuleType:
    """The `_jit` kernels, compiled (`interpret=False`) or under Triton's interpreter."""
    module = _modules.get(interpret)
    if module is not None:
        return module
    with _lock:
        if interpret not in _modules:
            import triton  # see triton_importable

            if not interpret and not isinstance(triton.language.standard._sum_combine, triton.runtime.JITFunction):
                raise ConfigError(
                    "Triton was first imported with TRITON_INTERPRET=1, so its standard library is interpreted and "
                    "the compiled kernels cannot use it; start the process without TRITON_INTERPRET for CUDA runs"
                )

            name = f"{__package__}._jit_{'interpreted' if interpret else 'compiled'}"
            spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_jit.py"))
            module = importlib.util.module_from_spec(spec)
            with _interpret_setting(interpret):
                sys.modules[name] = module
                spec.loader.exec_module(module)
            _modules[interpret] = module
    return _modules[interpret]


@contextlib.contextmanager
def _interpret_setting(interpret: bool):
    """TRITON_INTERPRET (and Triton's knob) set to `interpret` inside the block, restored after."""
    import triton  # only CUDA builds of torch bring triton; triton_importable() asks first

    knob = triton.knobs.runtime if hasattr(triton, "knobs") else types.SimpleNamespace()  # Triton < 3.4
    env_before = os.environ.get("TRITON_INTERPRET")
    dict_before = knob.__dict__.get("interpret", _MISSING)
    try:
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
        knob.__dict__.pop("interpret", None)  # let the knob read the variable
        yield
    finally:
        if dict_before is _MISSING:
            knob.__dict__.pop("interpret", None)
        else:
            knob.__dict__["interpret"] = dict_before
        if env_before is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = env_before


def check_launchable(*tensors: torch.Tensor) -> bool:
    """Validate tensors for a Triton launch; returns whether the interpreter runs it.

    CUDA tensors run compiled (or interpreted when TRITON_INTERPRET=1); CPU tensors only
    under the interpreter. Raises ConfigError with the reason otherwise.
    """
    interpret = interpreting()
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ConfigError(f"Triton kernels need every tensor on one device, got {sorted(map(str, devices))}")
    device = next(iter(devices))
    if device.type != "cuda" and not interpret:
        raise ConfigError(
            f"the Triton kernel backend needs CUDA tensors (got {device.type}); on the CPU it runs only under "
            "Triton's interpreter (set TRITON_INTERPRET=1 before the call) — or use kernel backend 'torch'/'auto'"
        )
    for t in tensors:
        if t.is_floating_point() and t.dtype not in SUPPORTED_DTYPES:
            raise ConfigError(f"Triton kernels support float32, float16 and bfloat16, got {t.dtype}")
    return interpret


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def rank_block(r: int) -> int:
    """Register slots for a hidden size r: tl.dot needs every dimension ≥ 16."""
    return max(16, next_pow2(r))


@dataclass(frozen=True)
class Blocks:
    """Tile sizes of the bypass and routed kernels (constexprs, so each choice compiles once)."""

    block_m: int
    block_k: int
    block_n: int
    num_warps: int = 4


def row_blocks(m: int, d: int, interpret: bool, override: dict | None = None) -> Blocks:
    """Tile sizes for M rows of width D.

    Compiled: 16-row tiles and 128-wide K/N chunks for class-token batches (M = B ≤ 16),
    up to 64 rows and 64-wide chunks otherwise (untuned: not measured on a GPU yet).
    Interpreted: one program per up to 1024 rows and one chunk over D, since the
    interpreter pays per program and per op, not per element.
    """
    if interpret:
        blocks = Blocks(block_m=min(max(16, next_pow2(m)), 1024), block_k=max(16, next_pow2(d)),
                        block_n=max(16, next_pow2(d)))
    elif m <= 16:  # class token at small batch: latency-bound, fewer and wider chunks over D
        blocks = Blocks(block_m=16, block_k=128, block_n=128, num_warps=4)
    else:
        blocks = Blocks(block_m=32 if m <= 512 else 64, block_k=64, block_n=64, num_warps=4)
    if override:
        blocks = Blocks(**{**blocks.__dict__, **override})
    for name in ("block_m", "block_k", "block_n"):
        value = getattr(blocks, name)
        if value < 16 or value & (value - 1):
            raise ConfigError(f"{name} must be a power of two ≥ 16, got {value}")
    return blocks


def dot_flags(dtype: torch.dtype, interpret: bool) -> dict:
    """DOT_F32: upcast GEMM operands (fp32 inputs; bf16/fp16 under the interpreter, whose
    tl.dot multiplies bf16 bit patterns). PREC 'ieee': fp32 GEMMs are not rounded to TF32."""
    return {"DOT_F32": bool(interpret or dtype == torch.float32), "PREC": "ieee"}


def act_code(kind: str | None) -> int:
    return {None: 0, "gelu": 1, "softmax": 2}[kind]
