"""restuning: Res-Tuners, the Res-Tuning-Bypass model, frozen backbones and the multi-task engine.

This package is the model library. It never imports FastAPI or Redis, so the
server and the trainers both build on it.
"""
from restuning.errors import ConfigError, InputError, RestuneError

__all__ = ["ConfigError", "InputError", "RestuneError"]
__version__ = "0.1.0"
