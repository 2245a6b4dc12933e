"""Processes killed (SIGKILL, by themselves) at one point of a file-store write each:
`python -m tests.tuner_store.crash_worker JOBS.json`, JOBS a list of [ROOT, POINT, [ARTIFACT…]].

For each job this process forks a child (torch and the store are imported once, before), and the child puts each
ARTIFACT file into the store at ROOT (or, for the delete points, first deletes the tuner "a"), with a log that
keeps 3 revisions so that compaction runs. The store's code is not touched: the child wraps the os calls the
store makes (write, fsync, replace, unlink) and sends itself SIGKILL at POINT, the first time that call reaches the
file it names. The parent prints {POINT: how the child ended} as one JSON line.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

POINTS = (
    "artifact-half-written",  # the temporary artifact file half written
    "artifact-before-rename",  # written and fsynced, not renamed into place
    "artifact-before-log",  # renamed into place, its put not logged
    "log-half-written",  # the put's log line half written
    "log-before-fsync",  # the put's log line written whole, not fsynced
    "delete-before-unlink",  # a delete logged, its files not removed
    "compaction-before-rename",  # the compacted log written, not renamed over the old one
    "compaction-before-sweep",  # the compacted log in place, unlisted files not swept
)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def path_of(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def arm(point: str) -> None:
    real_write, real_replace, real_unlink, real_fsync = os.write, os.replace, os.unlink, os.fsync

    def write(fd, data):
        target = path_of(fd)
        if point == "artifact-half-written" and ".safetensors.tmp-" in target and len(data) > 1:
            real_write(fd, bytes(data[: len(data) // 2]))
            die()
        if point == "log-half-written" and target.endswith("changes.jsonl") and len(data) > 1:
            real_write(fd, bytes(data[: len(data) // 2]))
            die()
        return real_write(fd, data)

    def fsync(fd):
        if point == "log-before-fsync" and path_of(fd).endswith("changes.jsonl"):
            die()
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        dst_name = str(dst)
        if point == "artifact-before-rename" and dst_name.endswith(".safetensors"):
            die()
        if point == "compaction-before-rename" and dst_name.endswith("changes.jsonl") and "tuners" not in dst_name:
            if Path(dst_name).exists():  # a compaction, not the log's creation
                die()
        real_replace(src, dst, *args, **kwargs)
        if point == "artifact-before-log" and dst_name.endswith(".safetensors"):
            die()

    def unlink(path, *args, **kwargs):
        if point == "delete-before-unlink" and str(path).endswith(".safetensors"):
            die()
        return real_unlink(path, *args, **kwargs)

    os.write, os.replace, os.unlink, os.fsync = write, replace, unlink, fsync


def child(root: str, point: str, files: list[str]) -> None:
    from tuner_store.file_store import FileTunerStore

    store = FileTunerStore(root, log_keep=3)
    store.revision()
    if point == "compaction-before-sweep":
        real_sweep = FileTunerStore._sweep

        def sweep(self, names=None):
            if names is None:  # the compaction's sweep (a put sweeps its own name first)
                die()
            return real_sweep(self, names)

        FileTunerStore._sweep = sweep
    else:
        arm(point)
    if point.startswith("delete"):
        store.delete("a")
    for path in files:
        store.put(Path(path).read_bytes())


def main() -> int:
    import json

    import tuner_store.file_store  # noqa: F401  (imported once, before the children fork)
    from tuner_store import decode_artifact

    jobs = json.loads(Path(sys.argv[1]).read_text())
    # decoding validates with torch and the model library, which load lazily: once here, not once per child
    decode_artifact(Path(next(files[0] for _, _, files in jobs if files)).read_bytes())
    ended = {}
    for root, point, files in jobs:
        pid = os.fork()
        if pid == 0:
            try:
                child(root, point, files)
            finally:
                os._exit(0)  # survived: the point was never reached
        _, status = os.waitpid(pid, 0)
        ended[point] = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
    print(json.dumps(ended), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
