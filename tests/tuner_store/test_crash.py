"""A process killed (SIGKILL) in the middle of a file-store write, at each point of it: the store opens clean, no
listed version lacks its file or is torn, and the next write succeeds and clears what the crash left."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tuner_store.crash_worker import POINTS
from tests.tuner_store.tuner_helpers import make_artifact
from tuner_store import write_artifact
from tuner_store.file_store import LOG_NAME, FileTunerStore

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]

# what the interrupted write leaves committed: the put is in once its log line is whole (fsync or not: the
# line is in the file, which readers read), the delete once its line is
COMMITTED = {"artifact-half-written": False, "artifact-before-rename": False, "artifact-before-log": False,
             "log-half-written": False, "log-before-fsync": True, "delete-before-unlink": True,
             "compaction-before-rename": True, "compaction-before-sweep": True}


def test_killed_mid_write_at_each_point(tmp_path, micro_backbone):
    artifact = str(write_artifact(make_artifact(micro_backbone, "a", seed=9), tmp_path / "a9.safetensors"))
    # two stores to start from, copied for each point (a put validates its artifact, which takes a while)
    plain = FileTunerStore(tmp_path / "plain", log_keep=3)
    plain.put(make_artifact(micro_backbone, "a", seed=0))
    plain.put(make_artifact(micro_backbone, "b", seed=0))
    shutil.copytree(tmp_path / "plain", tmp_path / "full")
    full = FileTunerStore(tmp_path / "full", log_keep=3)
    for seed in (1, 2, 3, 4):  # the next put makes 7 changes: more than twice log_keep, so it compacts
        full.put(make_artifact(micro_backbone, "b", seed=seed))
    jobs, before = [], {}
    for point in POINTS:
        root = tmp_path / point
        template = full if point.startswith("compaction") else plain
        shutil.copytree(template.root, root)
        before[point] = {r.ref for r in template.list()}
        jobs.append([str(root), point, [artifact]])
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    worker = subprocess.run([sys.executable, "-m", "tests.tuner_store.crash_worker", str(tmp_path / "jobs.json")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stderr[-3000:]
    assert json.loads(worker.stdout.strip().splitlines()[-1]) == {p: f"signal {signal.SIGKILL}" for p in POINTS}

    for point in POINTS:
        root = tmp_path / point
        reopened = FileTunerStore(root, log_keep=3)
        refs = {r.ref for r in reopened.list()}
        if point.startswith("delete"):
            expected = before[point] - {"a@1"} if COMMITTED[point] else before[point]
        else:
            expected = before[point] | {"a@2"} if COMMITTED[point] else before[point]
        assert refs == expected, point
        for record in reopened.list():  # every listed version has its whole file
            assert reopened.get(record.name, record.version).version == record.version, point
        revision = reopened.revision()
        assert [e.revision for e in reopened.changes(revision - 2)] == [revision - 1, revision], point

        # the next write succeeds, takes the next version the log allows (a file no line lists does not count),
        # and clears what the crash left of that name
        record = reopened.put(make_artifact(micro_backbone, "a", seed=10))
        committed_put = COMMITTED[point] and not point.startswith("delete")
        assert record.version == (3 if committed_put else 2), point
        live = {r.ref for r in reopened.list()}
        assert sorted(p.name for p in (root / "tuners" / "a").iterdir()) == sorted(
            f"{ref.split('@')[1]}.safetensors" for ref in live if ref.startswith("a@")), point
        assert FileTunerStore(root).get("a").version == record.version, point
        log = (root / LOG_NAME).read_bytes()
        assert log.endswith(b"\n") and b"\n\n" not in log, point
