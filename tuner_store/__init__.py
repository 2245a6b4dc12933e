"""Tuner artifacts (one safetensors file per tuner) and the stores that hold them (file://, redis://).

Importing this package loads neither torch, redis nor safetensors' loaders: listing or pushing tuners
through a server needs only httpx. The Redis backend imports redis when a redis:// store is opened.
"""
from tuner_store.artifact import (
    DEFAULT_MAX_ARTIFACT_BYTES,
    FORMAT_VERSION,
    NAME_PATTERN,
    NAME_RULE,
    TunerArtifact,
    classification_artifact,
    decode_artifact,
    encode_artifact,
    read_artifact,
    validate_artifact,
    write_artifact,
)
from tuner_store.errors import (
    ArtifactError,
    ConflictError,
    NotFoundError,
    StoreError,
    StoreFullError,
    StoreResetError,
    StoreUnavailableError,
)
from tuner_store.kinds import KINDS, TunerKind, build_tuner
from tuner_store.records import ChangeEvent, TunerRecord
from tuner_store.server_store import ServerTunerStore
from tuner_store.store import TunerStore, parse_ref
from tuner_store.urls import DEFAULT_STORE_URL, open_store

__all__ = [
    "ArtifactError",
    "ChangeEvent",
    "ConflictError",
    "DEFAULT_MAX_ARTIFACT_BYTES",
    "DEFAULT_STORE_URL",
    "FORMAT_VERSION",
    "KINDS",
    "NAME_PATTERN",
    "NAME_RULE",
    "NotFoundError",
    "StoreError",
    "StoreFullError",
    "StoreResetError",
    "ServerTunerStore",
    "StoreUnavailableError",
    "TunerArtifact",
    "TunerKind",
    "TunerRecord",
    "TunerStore",
    "build_tuner",
    "classification_artifact",
    "decode_artifact",
    "encode_artifact",
    "open_store",
    "parse_ref",
    "read_artifact",
    "validate_artifact",
    "write_artifact",
]
