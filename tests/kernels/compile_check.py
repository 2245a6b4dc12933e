"""Compile the kernels for a CUDA target without a GPU: record the launches a launcher makes
(argument types and constexprs exactly as on a real launch), then run Triton's compiler to
a cubin for sm_90. Catches what the interpreter cannot: code that only the compiler rejects."""
from __future__ import annotations

import contextlib

import triton
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.runtime.jit import native_specialize_impl

from restuning.kernels.triton import _runtime
from restuning.kernels.triton import bypass as bypass_ops
from restuning.kernels.triton import routed as routed_ops


class _Recorder:
    def __init__(self):
        self.launches: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name):
        recorder = self

        class _Kernel:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: recorder.launches.append((name, args, kwargs))

        return _Kernel()


@contextlib.contextmanager
def recording(monkeypatch):
    """Launchers record instead of launching (CPU tensors stand in for CUDA ones)."""
    recorder = _Recorder()
    for module in (bypass_ops, routed_ops):
        monkeypatch.setattr(module, "kernel_module", lambda interpret: recorder)
        monkeypatch.setattr(module, "check_launchable", lambda *tensors: False)  # as on CUDA: compiled
    yield recorder


def compile_launch(name: str, args: tuple, kwargs: dict, arch: int = 90):
    """triton.compile of one recorded launch, specialised like JITFunction.run does it."""
    fn = getattr(_runtime.kernel_module(False), name)
    kwargs = dict(kwargs)
    num_warps = kwargs.pop("num_warps", 4)
    values = dict(zip(fn.arg_names, args), **kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        value = values[param.name]
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[(i,)] = value
            continue
        ty, key = native_specialize_impl(BaseBackend, value, False, not param.do_not_specialize,
                                         not param.do_not_specialize_on_alignment)
        signature[param.name] = ty
        if ty == "constexpr":
            constexprs[(i,)] = value
        elif isinstance(key, str) and "D" in key:
            attrs[(i,)] = [["tt.divisibility", 16]]
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
