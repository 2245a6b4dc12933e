"""The thread uploads are validated and written on: one, at a lower CPU priority than serving.

Validating an artifact is CPU work in proportion to its size (decode, finiteness check, hash, re-encode): about a
second of a core for a 64 MiB artifact. On the helper threads, two such uploads at once took the cores the model
thread needed, and classify p99 rose tenfold while they ran. Here uploads take turns on one thread (so at most one
artifact is being validated and encoded at a time, whatever --max-concurrent-uploads lets in), and that thread runs
at nice +UPLOAD_NICE on Linux (a thread has its own nice value there): when the model thread wants a core, the
scheduler gives it one, and uploads use what serving leaves. docs/reliability.md has the measurement.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from restuning.torch_threads import single_threaded

log = logging.getLogger(__name__)

UPLOAD_NICE = 10


def _lower_priority() -> None:
    single_threaded()
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + UPLOAD_NICE))
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: uploads still take turns
        log.info("upload thread keeps the server's CPU priority (%s)", exc)


def upload_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="restune-upload", initializer=_lower_priority)
