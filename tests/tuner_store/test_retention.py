"""The change log stays bounded and a watcher is never silently left behind: trimmed logs, compacted files, flushed
or replaced stores, and a disk that fills up during a put."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.tuner_store.test_tuner_store import _collect
from tests.tuner_store.tuner_helpers import make_artifact
from tuner_store import NotFoundError, StoreFullError, StoreResetError, encode_artifact, open_store
from tuner_store.file_store import LOG_NAME

REPO = Path(__file__).resolve().parents[2]
KEEP = 5
CHANGES = 220


@pytest.fixture(scope="module")
def blobs(micro_backbone):
    """Two contents per name, so that each put is a new version."""
    return {(name, seed): encode_artifact(make_artifact(micro_backbone, name, seed=seed))
            for name in ("a", "b", "c") for seed in (0, 1)}


def churn(store, blobs, changes: int) -> None:
    """`changes` changes: puts of new versions and deletes, over three names."""
    done = 0
    while done < changes:
        for name in ("a", "b", "c"):
            if done == changes:
                return
            if name in store.latest() and done % 2:
                store.delete(name)
            else:
                store.put(blobs[(name, done % 2)])
            done += 1


def test_the_log_keeps_the_last_revisions(store_url, blobs):
    store = open_store(store_url, log_keep=KEEP)
    churn(store, blobs, CHANGES)  # Redis trims whole stream nodes of 100 entries: over 200 shows one trimmed
    assert store.revision() == CHANGES
    # a watcher a few changes behind catches up; one behind the trim point is told to read everything again
    assert [e.revision for e in store.changes(CHANGES - KEEP)] == list(range(CHANGES + 1 - KEEP, CHANGES + 1))
    with pytest.raises(StoreResetError, match="trimmed"):
        store.changes(3)
    with pytest.raises(StoreResetError, match="trimmed"):
        asyncio.run(_collect(store, 3, 1))
    assert [e.revision for e in asyncio.run(_collect(store, CHANGES - 3, 3))] == [CHANGES - 2, CHANGES - 1, CHANGES]
    # what is stored is whole; another handle (another process) reads the same
    other = open_store(store_url)
    assert other.list() == store.list() and other.revision() == CHANGES
    for record in other.list():
        assert other.get(record.name, record.version).version == record.version
    if store_url.startswith("file://"):
        lines = (Path(store_url[len("file://"):]) / LOG_NAME).read_text().splitlines()
        assert len(lines) <= 2 * KEEP + 2  # a header, then at most twice log_keep changes
        assert "epoch" in json.loads(lines[0])
    else:
        import redis

        client = redis.Redis.from_url(store_url)
        # XADD MAXLEN ~ trims whole stream nodes (100 entries by default): bounded, not exact
        assert client.xlen("restune:changes") <= KEEP + 100
        client.close()
    other.close()
    store.close()


def test_a_flushed_redis_that_moved_past_the_watcher_is_a_reset(redis_url, blobs):
    import redis

    store = open_store(redis_url)
    churn(store, blobs, 3)
    epoch, revision = store.epoch(), store.revision()
    assert epoch and revision == 3
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    churn(store, blobs, 6)  # a new store under the same URL, already past revision 3
    assert store.revision() == 6 and store.epoch() != epoch

    with pytest.raises(StoreResetError, match="flushed or replaced"):  # a watcher that was away meanwhile
        asyncio.run(_collect_with_epoch(store, revision, epoch))

    async def live():  # a watcher that was following when the flush happened
        watcher = asyncio.create_task(_collect_with_epoch(store, 6, store.epoch(), count=10))
        await asyncio.sleep(0.3)
        flusher = redis.Redis.from_url(redis_url)
        flusher.flushdb()
        flusher.close()
        await asyncio.to_thread(churn, store, blobs, 9)
        return await watcher

    with pytest.raises(StoreResetError):  # "behind" or "another epoch", whichever it polled first
        asyncio.run(live())
    store.close()


async def _collect_with_epoch(store, since, epoch, count=1):
    out = []
    async for event in store.watch(since, epoch=epoch, poll_interval=0.02):
        out.append(event)
        if len(out) == count:
            return out


def test_a_replaced_file_store_is_a_reset(tmp_path, blobs):
    root = tmp_path / "store"
    store = open_store(f"file://{root}")
    churn(store, blobs, 3)
    epoch = store.epoch()
    shutil.rmtree(root)
    churn(open_store(f"file://{root}"), blobs, 6)  # a new store in the same place, past revision 3
    with pytest.raises(StoreResetError, match="flushed or replaced"):
        asyncio.run(_collect_with_epoch(store, 3, epoch))
    assert store.revision() == 6 and store.epoch() != epoch


def test_compaction_while_another_process_watches(tmp_path, blobs):
    """A writer compacts the log every few changes while a watcher in another process follows it and a reader
    here lists and reads: the watcher ends with exactly the store's tuners, the reader never fails."""
    url = f"file://{tmp_path / 'store'}"
    store = open_store(url, log_keep=KEEP)
    changes = 150
    watcher = subprocess.Popen([sys.executable, "-m", "tests.tuner_store.watch_worker", url, str(changes)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout.readline().strip() == "ready", watcher.stderr.read()
        reader_errors: list[str] = []
        stop = threading.Event()

        def read() -> None:
            other = open_store(url)
            while not stop.is_set():
                try:
                    for record in other.list():
                        try:
                            assert other.get(record.name, record.version).version == record.version  # whole
                        except NotFoundError:  # deleted since it was listed
                            pass
                except Exception as exc:  # a torn or unreadable log, a half-written file
                    reader_errors.append(repr(exc))

        thread = threading.Thread(target=read)
        thread.start()
        try:
            churn(store, blobs, changes)
        finally:
            stop.set()
            thread.join()
        out, err = watcher.communicate(timeout=120)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["mirror"] == {name: r.version for name, r in store.latest().items()}
    assert result["events"] + result["resets"] > 0
    assert reader_errors == []
    assert len((tmp_path / "store" / LOG_NAME).read_text().splitlines()) <= 2 * KEEP + 2


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB tmpfs (mounting needs root, as in CI); a put that does not fit meets a real ENOSPC."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_the_put_and_leaves_nothing(small_disk, micro_backbone):
    store = open_store(f"file://{small_disk / 'store'}")
    small = make_artifact(micro_backbone, "small", seed=0)
    store.put(small)
    log_before = (small_disk / "store" / LOG_NAME).read_bytes()
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the disk, leaving less than an artifact
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - 8192))
    with pytest.raises(StoreFullError, match="disk is full"):
        store.put(make_artifact(micro_backbone, "big", seed=1))
    # nothing of it: no file, no temporary file, no log line; the store reads as before
    assert sorted(p.name for p in (small_disk / "store" / "tuners").iterdir()) == ["small"]
    assert sorted(p.name for p in (small_disk / "store" / "tuners" / "small").iterdir()) == ["1.safetensors"]
    assert (small_disk / "store" / LOG_NAME).read_bytes() == log_before
    other = open_store(f"file://{small_disk / 'store'}")
    assert [r.ref for r in other.list()] == ["small@1"] and other.get("small").version == 1
    filler.unlink()  # room again: the next put succeeds
    assert store.put(make_artifact(micro_backbone, "big", seed=1)).ref == "big@1"
    assert [r.ref for r in other.list()] == ["big@1", "small@1"]
