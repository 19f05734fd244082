"""Typed config objects read from ``MX8_*`` env vars and matching ``--flags``.

A daemon's config is a frozen, kw-only dataclass whose fields are declared with
``setting(...)``: the field carries its env var, its flag and a one-line help. From that
one declaration come the argparse parser, the env reading (flags win over env, env over
defaults) and the generated configuration reference in docs/.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from mx8_common.errors import ConfigError

__all__ = [
    "build_parser",
    "config_reference_markdown",
    "load_config",
    "parse_bool",
    "parse_size",
    "setting",
    "split_host_port",
]

C = TypeVar("C")

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_size(text: str) -> int:
    """``"256MiB"`` -> 268435456. Accepts plain bytes, k/M/G/T (decimal) and KiB/MiB/GiB/TiB."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ConfigError(f"{text!r} is not a byte size; write e.g. 268435456, 256MiB or 1GB")
    number, unit = int(m.group(1)), (m.group(2) or "").lower()
    if "i" in unit:
        return number * 1024 ** ("kmgt".index(unit[0]) + 1)
    return number * _UNITS[unit.rstrip("b") if unit != "b" else "b"]


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{text!r} is not a boolean; use 1/0, true/false, yes/no or on/off")


def setting(
    default: Any,
    *,
    env: str,
    help: str,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    secret: bool = False,
) -> Any:
    """Declare a config field with its env var, flag and help text.

    ``secret=True`` keeps the value out of the dataclass repr, so a logged config never
    shows it.
    """
    return dataclasses.field(
        default=default,
        repr=not secret,
        metadata={"env": env, "flag": flag, "help": help, "parse": parse},
    )


def split_host_port(value: str, flag: str, example: str = "127.0.0.1:50051") -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets) -> ``(host, port)``; ConfigError naming ``flag``."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{flag} {value!r} is not HOST:PORT; write e.g. {example}")
    return host.strip("[]"), int(port)


def _field_parser(cls: type, field: dataclasses.Field[Any]) -> Callable[[str], Any]:
    custom = field.metadata.get("parse")
    if custom is not None:
        return custom
    hint = typing.get_type_hints(cls)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    base = args[0] if optional and args else hint
    conv: Callable[[str], Any]
    if base is bool:
        conv = parse_bool
    elif base in (int, float, str):
        conv = base
    else:
        conv = str
    if optional:
        return lambda text: None if text == "" else conv(text)
    return conv


def _flag_name(field: dataclasses.Field[Any]) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def build_parser(cls: type, *, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one flag per ``setting`` field (all default to unset)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for field in dataclasses.fields(cls):
        if "env" not in field.metadata:
            continue
        help_text = (
            f"{field.metadata['help']} [env {field.metadata['env']}; default {field.default!r}]"
        )
        conv = _field_parser(cls, field)
        flag = _flag_name(field)
        hint = typing.get_type_hints(cls)[field.name]
        if hint is bool and field.metadata.get("parse") is None:
            parser.add_argument(
                flag,
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(flag, dest=field.name, type=conv, default=None, help=help_text)
    return parser


def load_config(
    cls: type[C],
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    prog: str = "mx8",
    description: str = "",
) -> C:
    """Build ``cls`` from defaults, then ``MX8_*`` env vars, then ``--flags``."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        env = field.metadata.get("env")
        if env and env in environ:
            try:
                values[field.name] = _field_parser(cls, field)(environ[env])
            except (ValueError, ConfigError) as exc:
                raise ConfigError(f"environment variable {env}={environ[env]!r}: {exc}") from None
    if argv is not None:
        parsed = build_parser(cls, prog=prog, description=description).parse_args(list(argv))
        for name, value in vars(parsed).items():
            if value is not None:
                values[name] = value
    return cls(**values)


def config_reference_markdown(classes: Sequence[type]) -> str:
    """The configuration reference in docs/, generated from the config classes."""
    out = [
        "# Configuration reference",
        "",
        "Generated from the config classes by",
        "`python -m scripts.gen_config_docs`; a test keeps it current.",
        "",
    ]
    for cls in classes:
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        out += [
            f"## `{cls.__module__}.{cls.__name__}`",
            "",
            doc,
            "",
            "| env var | flag | default | meaning |",
            "|---|---|---|---|",
        ]
        for field in dataclasses.fields(cls):
            if "env" not in field.metadata:
                continue
            out.append(
                f"| `{field.metadata['env']}` | `{_flag_name(field)}` | `{field.default!r}` "
                f"| {field.metadata['help']} |"
            )
        out.append("")
    return "\n".join(out)
