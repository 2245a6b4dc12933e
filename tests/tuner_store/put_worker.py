"""A separate process that puts artifacts into stores: `python -m tests.tuner_store.put_worker`.

It prints "ready" once everything a put needs is imported, then for each line on stdin
(a JSON object {"url": ..., "files": [...]}) opens that store, reads the files, waits for a "go"
line (so two workers start putting at the same moment), puts them in order and prints the
versions it got as one JSON line. Kept running between tests so each test does not pay for
importing torch twice.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    import safetensors.torch  # noqa: F401

    import restuning.bypass  # noqa: F401  (imported now, not during the race)
    from tuner_store import open_store

    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        payloads = [Path(f).read_bytes() for f in job["files"]]
        store = open_store(job["url"])
        store.ping()
        print("loaded", flush=True)
        sys.stdin.readline()  # "go"
        versions = [store.put(data).version for data in payloads]
        store.close()
        print(json.dumps(versions), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
