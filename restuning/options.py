"""Command-line flags generated from a config's own definition, so each setting is written once.

A config is a dataclass (help text in `field(metadata={"help": …})`, see `option`) or a pydantic model (help
text in `Field(description=…)`). `add_options` turns every field into `--field-name`, with its type, choices
(from a Literal) and help; `given_options` reads back the flags that were given. Flags default to None, so a
config's own default (or, for pydantic-settings, the RESTUNE_* environment variable) applies when a flag is
left out.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal, Union


def option(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None, default_factory: Any = None,
           **metadata: Any) -> Any:
    """A dataclass field that carries its command-line help (and, if it differs, its flag name)."""
    meta = {"help": help, **({"flag": flag} if flag else {}), **metadata}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    annotation: Any
    default: Any
    help: str
    flag: str | None
    required: bool = False


def _fields(config_cls: type) -> list[_Field]:
    hints = typing.get_type_hints(config_cls)
    if dataclasses.is_dataclass(config_cls):
        out = []
        for f in dataclasses.fields(config_cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            default = None if f.default is dataclasses.MISSING else f.default
            out.append(_Field(f.name, hints[f.name], default, f.metadata.get("help", ""), f.metadata.get("flag"),
                              required))
        return out
    out = []
    for name, info in config_cls.model_fields.items():  # pydantic
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        out.append(_Field(name, hints[name], default, info.description or "", extra.get("flag")))
    return out


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _default_text(default: Any) -> str:
    if default is None or default == [] or default is False:
        return ""
    return f" (default {default})"


def add_options(parser: argparse.ArgumentParser, config_cls: type, *, exclude: Iterable[str] = ()) -> None:
    """One flag per field of `config_cls` (except `exclude`), each defaulting to None (= not given)."""
    skip = set(exclude)
    for f in _fields(config_cls):
        if f.name in skip:
            continue
        flag = f.flag or f"--{f.name.replace('_', '-')}"
        kind = _unwrap_optional(f.annotation)
        help_text = f.help + _default_text(f.default)
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if f.required:
            kwargs["required"] = True
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is Literal:
            kwargs["choices"] = typing.get_args(kind)
        elif typing.get_origin(kind) is list:
            kwargs["action"] = "append"  # a list setting: the flag is repeated, once per item
        elif kind in (int, float, str):
            kwargs["type"] = kind
        else:
            raise TypeError(f"{config_cls.__name__}.{f.name}: no command-line form for {f.annotation!r}")
        parser.add_argument(flag, **kwargs)


def given_options(args: argparse.Namespace, config_cls: type, *, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of `config_cls` (except `exclude`, as in `add_options`) whose flags were given on the command line."""
    names = {f.name for f in _fields(config_cls)} - set(exclude)
    return {k: v for k, v in vars(args).items() if k in names and v is not None}

