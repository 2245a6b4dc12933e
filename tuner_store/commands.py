"""`restune tuners list|show|push|rm|export`: manage tuner artifacts in a store.

The handlers use what every store offers (list, record, get_bytes, put, delete, close); `--server URL`
opens a running server as the store (`tuner_store.server_store`). Nothing here needs torch: `show` reads
the tensors' names, dtypes and shapes from the safetensors header.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from tuner_store.artifact import DEFAULT_MAX_ARTIFACT_BYTES, config_from_header, parse_header
from tuner_store.errors import ArtifactError, StoreError
from tuner_store.fsutil import atomic_write_bytes
from tuner_store.server_store import is_server_url
from tuner_store.store import parse_ref
from tuner_store.urls import DEFAULT_STORE_URL, open_store

STORE_ENV = "RESTUNE_STORE"
# safetensors' dtype codes, as torch names them
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def backend_from_args(args: argparse.Namespace):
    """--server URL (a running server, through its API), else --store, else $RESTUNE_STORE, else ./data/tuners."""
    if getattr(args, "server", None):
        if args.store:
            raise StoreError("give either --store or --server, not both")
        if not is_server_url(args.server):
            raise StoreError(f"--server takes an http(s):// URL, got {args.server!r}")
        return open_store(args.server)
    return open_store(args.store or os.environ.get(STORE_ENV) or DEFAULT_STORE_URL)


def register(groups) -> None:
    location = argparse.ArgumentParser(add_help=False)
    location.add_argument(
        "--store", metavar="URL", default=None,
        help=f"tuner store: file:///path, a path, or redis://host:port/db (default: ${STORE_ENV}, else ./data/tuners)",
    )
    location.add_argument(
        "--server", metavar="URL", default=None,
        help="talk to a running restune server instead of a store (writes send $RESTUNE_ADMIN_TOKEN)",
    )
    t = groups.tuners

    p = t.add_parser("list", parents=[location], help="list every stored version")
    p.add_argument("--latest", action="store_true", help="only the newest version of each tuner")
    p.add_argument("--json", action="store_true", help="print a JSON array of records")
    p.set_defaults(handler=_list)

    p = t.add_parser("show", parents=[location], help="show one tuner: record, labels, structure, metrics")
    p.add_argument("ref", metavar="NAME[@VERSION]")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_show)

    p = t.add_parser("push", parents=[location], help="validate artifact files and store each as a new version")
    p.add_argument("files", metavar="FILE", nargs="+", help=".safetensors tuner artifacts")
    p.add_argument("--json", action="store_true", help="print a JSON array of the stored records")
    p.set_defaults(handler=_push)

    p = t.add_parser("rm", parents=[location], help="delete one version (NAME@VERSION) or every version (NAME)")
    p.add_argument("ref", metavar="NAME[@VERSION]")
    p.set_defaults(handler=_rm)

    p = t.add_parser("export", parents=[location], help="write a stored artifact to a file")
    p.add_argument("ref", metavar="NAME[@VERSION]")
    p.add_argument("out", metavar="OUT", help="file to write, or a directory (file NAME@VERSION.safetensors in it)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(handler=_export)


# -- formatting ---------------------------------------------------------------------------------

def _size(num_bytes: int) -> str:
    if num_bytes < 1024:
        return f"{num_bytes} B"
    for unit in ("KiB", "MiB", "GiB"):
        num_bytes /= 1024
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.1f} {unit}"
    raise AssertionError("unreachable")


def _created(created_at: str) -> str:
    """Seconds are enough in a table."""
    return created_at[:19].replace("T", " ")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


# -- handlers -----------------------------------------------------------------------------------

def _list(args) -> int:
    backend = backend_from_args(args)
    try:
        records = backend.list()
    finally:
        backend.close()
    if args.latest:
        records = list({r.name: r for r in records}.values())
    if args.json:
        print(json.dumps([r.to_json() for r in records], indent=2))
        return 0
    if not records:
        print(f"no tuners in {backend.url}")
        return 0
    rows = [
        [r.name, str(r.version), r.kind, str(r.num_labels), f"{r.backbone_name} {r.backbone_fingerprint[:8]}",
         _created(r.created_at), _size(r.size_bytes)]
        for r in records
    ]
    print(_table(rows, ["NAME", "VERSION", "KIND", "LABELS", "BACKBONE", "CREATED (UTC)", "SIZE"]))
    return 0


def _show(args) -> int:
    name, version = parse_ref(args.ref)
    backend = backend_from_args(args)
    try:
        record = backend.record(name, version or "latest")
        header = parse_header(backend.get_bytes(name, record.version))
        versions = [r.version for r in backend.list() if r.name == name]
    finally:
        backend.close()
    config = config_from_header(header)
    tensors = {k: {"dtype": SAFETENSORS_DTYPES.get(v["dtype"], v["dtype"]), "shape": list(v["shape"])}
               for k, v in sorted(header.items()) if k != "__metadata__"}
    num_params = sum(math.prod(t["shape"]) for t in tensors.values())
    labels = config.get("labels", [])
    if args.json:
        print(json.dumps({
            "record": record.to_json(), "labels": labels, "tuner": config.get("tuner"),
            "backbone": config.get("backbone"), "tensors": tensors, "num_params": num_params,
            "versions": versions,
        }, indent=2))
        return 0
    lines = [
        f"{record.ref}  {record.kind}  {record.num_labels} labels",
        f"  backbone  {record.backbone_name} (fingerprint {record.backbone_fingerprint})",
        f"  created   {record.created_at}",
        f"  size      {_size(record.size_bytes)}, weights sha256 {record.sha256}",
        f"  labels    {', '.join(labels) if labels else '-'}",
        f"  tuner     {json.dumps(config.get('tuner'), sort_keys=True)}",
        f"  metrics   {json.dumps(record.metrics, sort_keys=True) if record.metrics else '-'}",
        f"  tensors   {len(tensors)} ({num_params:,} parameters)",
        f"  versions  {', '.join(map(str, versions))}",
    ]
    print("\n".join(lines))
    return 0


def _push(args) -> int:
    backend = backend_from_args(args)
    limit = getattr(backend, "max_artifact_bytes", DEFAULT_MAX_ARTIFACT_BYTES)
    stored = []
    try:
        for file in args.files:
            try:
                size = os.stat(file).st_size
                if size > limit:  # refuse before reading a huge file into memory
                    raise ArtifactError(f"{file} is {size:,} bytes, over the limit of {limit:,} bytes")
                data = Path(file).read_bytes()
            except OSError as exc:
                raise ArtifactError(f"cannot read {file}: {exc.strerror or exc}") from None
            try:
                record = backend.put(data)
            except ArtifactError as exc:
                raise ArtifactError(exc.problems, name=exc.name, source=file) from None
            stored.append(record)
            if not args.json:
                print(f"{file}: stored as {record.ref} in {backend.url} (weights sha256 {record.sha256[:12]})")
    finally:
        backend.close()
    if args.json:
        print(json.dumps([r.to_json() for r in stored], indent=2))
    return 0


def _rm(args) -> int:
    name, version = parse_ref(args.ref)
    backend = backend_from_args(args)
    try:
        if args.ref.endswith("@latest"):
            version = backend.record(name).version
        deleted = backend.delete(name, version)
    finally:
        backend.close()
    print(f"deleted {', '.join(f'{name}@{v}' for v in deleted)} from {backend.url}")
    return 0


def _export(args) -> int:
    name, version = parse_ref(args.ref)
    backend = backend_from_args(args)
    try:
        record = backend.record(name, version or "latest")
        out = Path(args.out)
        if out.is_dir() or args.out.endswith(("/", os.sep)):
            out = out / f"{record.ref}.safetensors"
        if out.exists() and not args.force:
            raise StoreError(f"{out} exists; pass --force to overwrite it")
        data = backend.get_bytes(name, record.version)
    finally:
        backend.close()
    try:
        atomic_write_bytes(out, data)
    except OSError as exc:
        raise StoreError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"exported {record.ref} to {out} ({_size(len(data))})")
    return 0
