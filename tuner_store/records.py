"""The tuner record and the change event: what a store says about a stored version and about a change.

One schema for the store, the server's JSON and the client: the server adds its serving state beside these
fields, and `TunerRecord.from_json` reads a server's answer back, ignoring what it added.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal


@dataclass(frozen=True)
class TunerRecord:
    """What a store knows about one stored version, without its tensors."""

    name: str
    version: int
    kind: str
    sha256: str  # the artifact's weights_sha256
    size_bytes: int  # size of the stored file
    created_at: str
    backbone_name: str
    backbone_fingerprint: str
    num_labels: int
    metrics: dict

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TunerRecord":
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    @classmethod
    def from_config(cls, config: dict, size_bytes: int) -> "TunerRecord":
        """From a validated artifact config (the file's metadata) and the stored file's size."""
        return cls(
            name=config["name"],
            version=config["version"],
            kind=config["kind"],
            sha256=config["weights_sha256"],
            size_bytes=size_bytes,
            created_at=config["created_at"],
            backbone_name=config["backbone"]["name"],
            backbone_fingerprint=config["backbone"]["fingerprint"],
            num_labels=len(config["labels"]),
            metrics=config["metrics"],
        )


@dataclass(frozen=True)
class ChangeEvent:
    revision: int
    action: Literal["put", "delete"]
    name: str
    version: int | None  # None: every version of `name` was deleted

    @property
    def ref(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"

    def to_json(self) -> dict:
        return asdict(self)
