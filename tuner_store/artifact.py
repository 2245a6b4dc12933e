"""The tuner artifact: one safetensors file holding a tuner's weights and, in its metadata, its JSON config.

File layout (plain safetensors, readable by any safetensors tool):

    8-byte little-endian header length | JSON header | raw tensor bytes

The header's ``__metadata__`` is ``{"format": "pt", "restune": "<config JSON>"}``; the config holds
format_version, name, version, kind, labels, tuner, backbone, metrics, created_at and weights_sha256.
Nothing is pickled, and nothing is trusted: `decode_artifact` checks the size before parsing, then
the schema, names, dtypes, finiteness, the weights' sha256, the tensor names and shapes the config
implies on the recorded backbone, and the label count, and reports every problem in one ArtifactError.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from restuning.checks import is_int
from restuning.errors import ConfigError, choices
from restuning.state_shapes import shape_problems
from tuner_store.errors import ArtifactError
from tuner_store.fsutil import atomic_write_bytes
from tuner_store.kinds import KINDS, UnsupportedKindError

if TYPE_CHECKING:
    import torch  # torch: see the note at the top

# torch, safetensors and restuning's model modules are imported inside the functions that touch tensors:
# tuner_store installs without them (the client extra), and listing or deleting tuners never loads them.

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1,)
DEFAULT_MAX_ARTIFACT_BYTES = 64 * 1024 * 1024

# Names become file names and URL path segments, so they are restricted to characters that are
# safe everywhere: lowercase only (no two names that collide on a case-insensitive file system),
# no '/', '\\' or '@' (the CLI's NAME@VERSION separator), no leading '.', no '..' anywhere.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
NAME_RULE = "1-64 characters from a-z 0-9 . _ -, starting with a letter or digit, with no '..'"

ALLOWED_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
METADATA_KEY = "restune"
CONFIG_KEYS: tuple[str, ...] = (
    "format_version", "name", "version", "kind", "labels", "tuner", "backbone", "metrics", "created_at",
    "weights_sha256",
)
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_valid_name(name: object) -> bool:
    # fullmatch: with match, '$' would also accept a name ending in a newline.
    return isinstance(name, str) and bool(NAME_PATTERN.fullmatch(name)) and ".." not in name


def name_problems(name: object) -> list[str]:
    if not isinstance(name, str):
        return [f"name must be a string, got {type(name).__name__}"]
    if not is_valid_name(name):
        return [f"name {name!r} is not allowed: use {NAME_RULE}"]
    return []


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def weights_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order.

    Each entry is length-prefixed so no two different tensor sets hash alike; the bytes are
    the little-endian row-major bytes safetensors stores, so the hash of a decoded file equals
    the hash of the tensors that were encoded.
    """
    import torch  # torch: see the note at the top

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        raw = tensor.reshape(-1).view(torch.uint8).numpy()
        entry = json.dumps([name, dtype_name(tensor.dtype), list(tensor.shape), int(raw.nbytes)]).encode()
        digest.update(len(entry).to_bytes(8, "little"))
        digest.update(entry)
        digest.update(memoryview(raw))
    return digest.hexdigest()


@dataclass
class TunerArtifact:
    """A tuner in memory: its config (plain JSON values) and its tensors."""

    name: str
    kind: str  # one of KINDS
    labels: list[str]  # one per head output (classification); may be [] for diffusion
    tuner: dict  # the tuner's structure as JSON; classification: BypassConfig.to_json()
    backbone: dict  # {"name", "fingerprint"} + BackboneInfo.to_json() fields for classification
    tensors: dict[str, torch.Tensor]
    metrics: dict = field(default_factory=dict)
    created_at: str = field(default_factory=utc_now)
    version: int | None = None  # assigned by the store on put
    format_version: int = FORMAT_VERSION

    @property
    def weights_sha256(self) -> str:
        return weights_sha256(self.tensors)

    @property
    def ref(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def config(self, *, weights_sha256: str | None = None) -> dict:
        """The JSON config stored in the file's metadata."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tensors"}
        out["weights_sha256"] = self.weights_sha256 if weights_sha256 is None else weights_sha256
        return out


# -- validation ------------------------------------------------------------------------------------

def _iso_time_ok(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _field_problems(config: dict) -> list[str]:
    """Types and values of the config fields that are present (missing ones are reported by the caller)."""
    problems: list[str] = []
    if "format_version" in config:
        fv = config["format_version"]
        if not is_int(fv):
            problems.append(f"format_version must be an integer, got {fv!r}")
        elif fv not in SUPPORTED_FORMAT_VERSIONS:
            problems.append(
                f"format_version {fv} is not supported by this build (supported: {choices(SUPPORTED_FORMAT_VERSIONS)})"
            )
    if "name" in config:
        problems += name_problems(config["name"])
    if "version" in config:
        v = config["version"]
        if v is not None and not (is_int(v) and v >= 1):
            problems.append(f"version must be a positive integer or null, got {v!r}")
    if "kind" in config and config["kind"] not in KINDS:
        problems.append(f"kind {config['kind']!r} is unknown; choose one of {choices(KINDS)}")
    if "labels" in config:
        labels = config["labels"]
        if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
            problems.append("labels must be a list of non-empty strings")
        else:
            duplicates = sorted({x for x in labels if labels.count(x) > 1})
            if duplicates:
                problems.append(f"labels must be distinct; repeated: {duplicates}")
    for key in ("tuner", "backbone", "metrics"):
        if key in config and not isinstance(config[key], dict):
            problems.append(f"{key} must be a JSON object, got {type(config[key]).__name__}")
    backbone = config.get("backbone")
    if isinstance(backbone, dict):
        if not isinstance(backbone.get("name"), str) or not backbone.get("name"):
            problems.append("backbone.name must be a non-empty string")
        if not (isinstance(backbone.get("fingerprint"), str) and _SHA256_HEX.match(backbone["fingerprint"])):
            problems.append("backbone.fingerprint must be a sha256 hex digest (64 lowercase hex characters)")
    if "created_at" in config and not _iso_time_ok(config["created_at"]):
        problems.append(f"created_at must be an ISO-8601 time, got {config['created_at']!r}")
    if "weights_sha256" in config:
        sha = config["weights_sha256"]
        if not (isinstance(sha, str) and _SHA256_HEX.match(sha)):
            problems.append("weights_sha256 must be a sha256 hex digest (64 lowercase hex characters)")
    return problems


def _is_tensor(value: object) -> bool:
    import torch  # torch: see the note at the top

    return isinstance(value, torch.Tensor)


def _tensor_problems(tensors: dict) -> list[str]:
    import torch  # torch: see the note at the top

    problems: list[str] = []
    bad_types = sorted(str(k) for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad_types:
        problems.append(f"tensors must map names to torch.Tensor; not tensors: {bad_types}")
    bad_dtypes = sorted(
        f"{k} ({dtype_name(v.dtype)})" for k, v in tensors.items()
        if isinstance(v, torch.Tensor) and dtype_name(v.dtype) not in ALLOWED_DTYPES
    )
    if bad_dtypes:
        problems.append(
            f"tensors with an unsupported dtype: {', '.join(bad_dtypes)}; allowed dtypes: "
            f"{', '.join(ALLOWED_DTYPES)}"
        )
    non_finite = []
    for k in sorted(k for k in tensors if isinstance(k, str)):
        v = tensors[k]
        # one pass (and one mask) over a tensor that is fine, as nearly all are; the counts only for one that is not
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            nan = int(torch.isnan(v).sum())
            inf = int(torch.isinf(v).sum())
            non_finite.append(f"{k} ({nan} NaN, {inf} Inf)")
    if non_finite:
        problems.append(f"tensors with non-finite values: {', '.join(non_finite)}")
    return problems


def _short(fingerprint: object) -> str:
    return f"{fingerprint[:12]}…" if isinstance(fingerprint, str) else repr(fingerprint)


def _problems(
    config: dict,
    tensors: dict,
    *,
    backbone_fingerprint: str | None,
    backbone_name: str | None,
) -> list[str]:
    """Every problem of a config + tensors; `config` may lack keys (a decoded file) or carry no sha (in memory)."""
    problems = _field_problems(config)
    problems += _tensor_problems(tensors)
    tensors_ok = all(isinstance(k, str) and _is_tensor(v) for k, v in tensors.items())
    stored_sha = config.get("weights_sha256")
    if tensors_ok and isinstance(stored_sha, str) and _SHA256_HEX.match(stored_sha):
        actual = weights_sha256(tensors)
        if actual != stored_sha:
            problems.append(
                f"weights sha256 mismatch: the metadata says {_short(stored_sha)} but the tensors hash to "
                f"{_short(actual)} (the file was modified or corrupted)"
            )
    kind = config.get("kind")
    tuner, backbone, labels = config.get("tuner"), config.get("backbone"), config.get("labels")
    if (kind in KINDS and isinstance(tuner, dict) and isinstance(backbone, dict)
            and isinstance(labels, list)):
        try:
            expected, kind_problems = KINDS[kind].expected_shapes(tuner, backbone, labels)
        except ConfigError as exc:
            problems += exc.problems
        except UnsupportedKindError as exc:
            problems.append(str(exc))
        else:
            problems += kind_problems
            problems += shape_problems(expected, {k: v for k, v in tensors.items() if _is_tensor(v)})
    if backbone_fingerprint is not None and isinstance(backbone, dict):
        mismatch = backbone_mismatch(backbone, backbone_fingerprint, backbone_name)
        if mismatch:
            problems.append(mismatch)
    return problems


def backbone_mismatch(backbone: dict, fingerprint: str, backbone_name: str | None = None) -> str | None:
    """Why a tuner recorded with `backbone` cannot run on the frozen model with `fingerprint`; None if it can."""
    theirs = backbone.get("fingerprint")
    if theirs == fingerprint:
        return None
    ours = f"backbone {backbone_name!r}" if backbone_name else "the backbone in use"
    return (f"the tuner was trained on backbone {backbone.get('name')!r} (fingerprint {_short(theirs)}), "
            f"but {ours} has fingerprint {_short(fingerprint)}; a tuner only works on the exact "
            "backbone weights it was trained with")


def validate_artifact(
    artifact: TunerArtifact,
    *,
    backbone_fingerprint: str | None = None,
    backbone_name: str | None = None,
) -> None:
    """Check an in-memory artifact as `decode_artifact` checks a file; ArtifactError lists every problem."""
    config = {f.name: getattr(artifact, f.name) for f in fields(artifact) if f.name != "tensors"}
    problems = []
    if not isinstance(artifact.tensors, dict):
        problems.append("tensors must be a dict of name -> torch.Tensor")
        tensors = {}
    else:
        tensors = artifact.tensors
    problems += _problems(config, tensors, backbone_fingerprint=backbone_fingerprint, backbone_name=backbone_name)
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems.append(f"the config must be plain JSON (no NaN/Infinity, no objects): {exc}")
    if problems:
        raise ArtifactError(problems, name=artifact.name if isinstance(artifact.name, str) else None)


# -- encoding ----------------------------------------------------------------------------------------

def _encode(artifact: TunerArtifact, sha: str | None = None) -> bytes:
    from safetensors.torch import save  # torch: see the note at the top

    if not isinstance(artifact.tensors, dict) or not all(
        isinstance(k, str) and _is_tensor(v) for k, v in artifact.tensors.items()
    ):
        raise ArtifactError("tensors must be a dict of name -> torch.Tensor", name=artifact.name)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in artifact.tensors.items():
        tensor = value.detach().to("cpu").contiguous()
        # safetensors refuses tensors that share memory (tied weights); a copy is stored instead.
        if tensor.numel() and tensor.data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        tensors[key] = tensor
    try:
        text = json.dumps(artifact.config(weights_sha256=sha), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"the config must be plain JSON (no NaN/Infinity, no objects): {exc}",
                            name=artifact.name) from None
    return save(tensors, metadata={"format": "pt", METADATA_KEY: text})


def encode_artifact(artifact: TunerArtifact) -> bytes:
    """The artifact as safetensors bytes; the metadata carries the config with its weights_sha256."""
    return _encode(artifact)


def _looks_like(data: bytes) -> str | None:
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return "a Python pickle"
    if data[:4] == b"PK\x03\x04":
        return "a zip archive (a torch.save checkpoint?)"
    return None


def parse_header(data: bytes | memoryview) -> dict:
    """The safetensors JSON header, or ArtifactError saying why the bytes are not a safetensors file."""
    size = len(data)
    other = _looks_like(bytes(data[:4]))
    if other:
        raise ArtifactError(
            f"this is {other}, not a safetensors file; restune artifacts are safetensors and never unpickled"
        )
    if size < 8:
        raise ArtifactError(f"not a safetensors file: only {size} bytes")
    header_len = int.from_bytes(bytes(data[:8]), "little")
    if header_len > size - 8:
        raise ArtifactError(
            f"not a safetensors file, or a truncated one: its header claims {header_len} bytes but only "
            f"{size - 8} follow"
        )
    try:
        header = json.loads(bytes(data[8:8 + header_len]))
    except (UnicodeDecodeError, ValueError):
        raise ArtifactError("not a safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise ArtifactError("not a safetensors file: its header is not a JSON object")
    return header


def config_from_header(header: dict) -> dict:
    """The restune config inside a parsed safetensors header."""
    metadata = header.get("__metadata__")
    text = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    if text is None:
        raise ArtifactError(
            f"this safetensors file has no restune metadata (__metadata__.{METADATA_KEY}); "
            "it is not a restune tuner artifact"
        )
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ArtifactError(f"the restune metadata is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ArtifactError("the restune metadata must be a JSON object")
    return config


def read_config(path: str | os.PathLike) -> dict:
    """The config of an artifact file, reading only its header (no tensors, no validation)."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        header_len = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
        if header_len > DEFAULT_MAX_ARTIFACT_BYTES:
            raise ArtifactError(f"{path}: not a restune artifact (header of {header_len} bytes)")
        return config_from_header(parse_header(prefix + f.read(header_len)))


def decode_artifact(
    data: bytes | bytearray | memoryview,
    *,
    max_bytes: int | None = DEFAULT_MAX_ARTIFACT_BYTES,
    backbone_fingerprint: str | None = None,
    backbone_name: str | None = None,
) -> TunerArtifact:
    """Parse and fully validate artifact bytes; ArtifactError lists every problem found.

    The size is checked before anything is parsed. `backbone_fingerprint` (and, for the message,
    `backbone_name`) rejects a tuner trained on other backbone weights.
    """
    from safetensors import SafetensorError  # torch: see the note at the top
    from safetensors.torch import load

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ArtifactError(f"artifact data must be bytes, got {type(data).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise ArtifactError(
            f"the artifact is {len(data):,} bytes, over the limit of {max_bytes:,} bytes"
        )
    data = bytes(data)
    config = config_from_header(parse_header(data))
    name = config.get("name") if isinstance(config.get("name"), str) else None
    try:
        tensors = load(data)
    except SafetensorError as exc:
        raise ArtifactError(f"the tensor data is truncated or corrupt (safetensors: {exc})", name=name) from None
    problems = []
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        problems.append(f"metadata is missing {missing}")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        problems.append(f"metadata has unknown keys {unknown}; valid keys: {', '.join(CONFIG_KEYS)}")
    problems += _problems(config, tensors, backbone_fingerprint=backbone_fingerprint, backbone_name=backbone_name)
    if problems:
        raise ArtifactError(problems, name=name)
    return TunerArtifact(
        name=config["name"],
        kind=config["kind"],
        labels=config["labels"],
        tuner=config["tuner"],
        backbone=config["backbone"],
        tensors=tensors,
        metrics=config["metrics"],
        created_at=config["created_at"],
        version=config["version"],
        format_version=config["format_version"],
    )


def write_artifact(artifact: TunerArtifact, path: str | os.PathLike) -> Path:
    """Validate, then write the artifact file atomically (a reader never sees half a file)."""
    validate_artifact(artifact)
    path = Path(path)
    atomic_write_bytes(path, encode_artifact(artifact))
    return path


def read_artifact(path: str | os.PathLike, **kwargs: Any) -> TunerArtifact:
    """Read and validate an artifact file; keyword arguments as for `decode_artifact`."""
    max_bytes = kwargs.get("max_bytes", DEFAULT_MAX_ARTIFACT_BYTES)
    try:
        size = os.stat(path).st_size
        if max_bytes is not None and size > max_bytes:
            raise ArtifactError(f"{path} is {size:,} bytes, over the limit of {max_bytes:,} bytes")
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return decode_artifact(data, **kwargs)
    except ArtifactError as exc:
        raise ArtifactError(exc.problems, name=exc.name, source=str(path)) from None


# -- classification helpers -------------------------------------------------------------------------

def _plain_json(value: Any) -> Any:
    """Tuples become lists, as they would after a trip through the file."""
    return json.loads(json.dumps(value))


def classification_artifact(
    name: str,
    bypass,
    labels: list[str],
    backbone,
    metrics: dict | None = None,
) -> TunerArtifact:
    """Package a trained ResTuningBypass; validated here, so a bad tuner fails at the trainer, not at push."""
    artifact = TunerArtifact(
        name=name,
        kind="classification",
        labels=list(labels),
        tuner=_plain_json(bypass.config.to_json()),
        backbone={**_plain_json(backbone.info.to_json()), "fingerprint": backbone.fingerprint()},
        tensors={k: v.detach().to("cpu").clone() for k, v in bypass.state_dict().items()},
        metrics=dict(metrics or {}),
    )
    validate_artifact(artifact)
    return artifact
