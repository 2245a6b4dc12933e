"""Two processes putting versions of one name at once: nothing lost, nothing torn, and a watcher sees it all."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.tuner_store.test_tuner_store import _collect
from tests.tuner_store.tuner_helpers import make_artifact
from tuner_store import write_artifact

REPO = Path(__file__).resolve().parents[2]
PER_WORKER = 6


def _expect(worker: subprocess.Popen, wanted: str) -> str:
    line = worker.stdout.readline()
    if not line.startswith(wanted):
        worker.kill()
        raise AssertionError(f"worker said {line!r}, expected {wanted!r}; stderr: {worker.stderr.read()[-2000:]}")
    return line


@pytest.fixture(scope="module")
def put_workers():
    workers = [
        subprocess.Popen([sys.executable, "-m", "tests.tuner_store.put_worker"], cwd=REPO, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for w in workers:
            _expect(w, "ready")
        yield workers
    finally:
        for w in workers:
            w.kill()
            w.wait()


def test_two_processes_put_versions_of_one_name_at_once(put_workers, store, store_url, micro_backbone, tmp_path):
    shas = set()
    for index, worker in enumerate(put_workers):
        files = []
        for i in range(PER_WORKER):
            artifact = make_artifact(micro_backbone, seed=100 * index + i)
            files.append(str(write_artifact(artifact, tmp_path / f"w{index}-{i}.safetensors")))
            shas.add(artifact.weights_sha256)
        worker.stdin.write(json.dumps({"url": store_url, "files": files}) + "\n")
        worker.stdin.flush()
    for worker in put_workers:
        _expect(worker, "loaded")

    # A watcher in this process, started before the workers put anything, must see every put.
    seen = []
    watcher = threading.Thread(target=lambda: seen.extend(asyncio.run(_collect(store, 0, 2 * PER_WORKER, 60))))
    watcher.start()
    for worker in put_workers:  # both are waiting: release them together
        worker.stdin.write("go\n")
        worker.stdin.flush()
    got = [json.loads(_expect(worker, "[")) for worker in put_workers]
    watcher.join(60)

    all_versions = sorted(v for versions in got for v in versions)
    assert all_versions == list(range(1, 2 * PER_WORKER + 1))  # distinct, none lost
    assert all(versions == sorted(versions) for versions in got)
    records = store.list()
    assert [r.version for r in records] == all_versions
    # Every stored version decodes in full (its sha256 checked) and holds one of the pushed artifacts.
    assert {store.get("digits", r.version).weights_sha256 for r in records} == shas
    assert [(e.revision, e.action, e.version) for e in seen] == [(i, "put", i) for i in all_versions]
    if store_url.startswith("file://"):
        assert [p.name for p in Path(store.root).rglob("*") if ".tmp-" in p.name] == []
