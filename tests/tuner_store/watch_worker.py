"""A separate process that mirrors a store through its change log: `python -m tests.tuner_store.watch_worker URL REV`.

It keeps {name: newest version} the way a server replica does (read everything, then follow the changes from that
revision and epoch; on StoreResetError read everything again) until it has applied revision REV, then prints
{"mirror": …, "resets": N, "events": N} as one JSON line.
"""
from __future__ import annotations

import asyncio
import json
import sys


async def follow(url: str, target: int) -> dict:
    from tuner_store import NotFoundError, StoreResetError, open_store

    store = open_store(url)
    resets = events = 0
    print("ready", flush=True)
    while True:
        epoch = store.epoch()
        revision = store.revision()
        mirror = {name: record.version for name, record in store.latest().items()}
        if revision >= target:
            return {"mirror": mirror, "resets": resets, "events": events}
        try:
            async for event in store.watch(revision, epoch=epoch, poll_interval=0.005):
                events += 1
                try:
                    mirror[event.name] = store.record(event.name).version
                except NotFoundError:
                    mirror.pop(event.name, None)
                if event.revision >= target:
                    return {"mirror": mirror, "resets": resets, "events": events}
        except StoreResetError:
            resets += 1


def main() -> int:
    print(json.dumps(asyncio.run(follow(sys.argv[1], int(sys.argv[2])))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
