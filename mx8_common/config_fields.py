"""Typed config objects read from ``MX8_*`` env vars and matching ``--flags``.

A config is a frozen, kw-only dataclass whose fields are declared with ``setting(...)``:
the field carries its env var, its flag and a one-line help. From that one declaration
come the argparse parser, the env reading (flags win over env, env over defaults) and the
generated configuration reference in docs/. A daemon that exposes another class's setting
(the agent's ``--fetch-*`` flags are ``FetchConfig``'s) re-uses its declaration with
``shared(...)`` instead of declaring the variable, and its default, a second time.

This module is the one place that reads the process environment: everything else asks a
config class (``load_config`` / ``load_env`` / a class's ``from_env``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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
    "env_names",
    "flag_name",
    "http_host_port",
    "load_config",
    "load_env",
    "parse_bool",
    "parse_size",
    "setting",
    "setting_names",
    "shared",
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
    also_env: tuple[str, ...] = (),
) -> Any:
    """Declare a config field with its env var, flag and help text.

    ``secret=True`` keeps the value out of the dataclass repr, so a logged config never
    shows it. ``also_env`` names variables read, in order, when ``env`` is unset or empty
    (the standard ``AWS_*`` fallbacks of an ``MX8_*`` override).
    """
    return dataclasses.field(
        default=default,
        repr=not secret,
        metadata={
            "env": env,
            "also_env": also_env,
            "flag": flag,
            "help": help,
            "parse": parse,
        },
    )


def shared(cls: type, name: str, *, flag: str | None = None, help: str | None = None) -> Any:
    """Expose ``cls``'s setting ``name`` in another config: same env var, default and parser.

    ``flag`` and ``help`` may be re-worded for the daemon that exposes it; the variable and
    its default stay declared once, in ``cls``.
    """
    field = cls.__dataclass_fields__[name]
    meta = dict(field.metadata)
    if flag is not None:
        meta["flag"] = flag
    if help is not None:
        meta["help"] = help
    return dataclasses.field(default=field.default, repr=field.repr, metadata=meta)


def split_host_port(value: str, flag: str, example: str = "127.0.0.1:50051") -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets) -> ``(host, port)``; ConfigError naming ``flag``."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{flag} {value!r} is not HOST:PORT; write e.g. {example}")
    return host.strip("[]"), int(port)


def http_host_port(value: str, flag: str) -> tuple[str, int]:
    """An HTTP listen address: ``HOST:PORT``, or a bare ``PORT`` meaning loopback only
    (``127.0.0.1:PORT``): the status page is not published unless a host is named."""
    if value.isdigit():
        if int(value) > 65535:
            raise ConfigError(f"{flag} {value!r} is not a port; write e.g. 9400")
        return "127.0.0.1", int(value)
    return split_host_port(value, flag, "9400 (loopback) or 0.0.0.0:9400")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field_parser(cls: type, field: dataclasses.Field[Any]) -> Callable[[str], Any]:
    custom = field.metadata.get("parse")
    if custom is not None:
        return custom
    hint = _hints(cls)[field.name]
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


def flag_name(field: dataclasses.Field[Any]) -> str:
    """The ``--flag`` of a setting (declared, or ``--field-name``)."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def env_names(field: dataclasses.Field[Any]) -> tuple[str, ...]:
    """Every variable a setting reads, the primary first."""
    return (field.metadata["env"], *field.metadata.get("also_env", ()))


def setting_names(cls: type, name: str) -> str:
    """How a person sets field ``name`` of ``cls``: its variable (or its ``--flag``)."""
    field = cls.__dataclass_fields__[name]
    return f"{field.metadata['env']} (or {flag_name(field)})"


@functools.cache
def _settings(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    return tuple(f for f in dataclasses.fields(cls) if "env" in f.metadata)


def _argparse_type(conv: Callable[[str], Any]) -> Callable[[str], Any]:
    """``conv`` whose ``ConfigError`` argparse reports as "argument --flag: <message>"."""

    def parse(text: str) -> Any:
        try:
            return conv(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def build_parser(cls: type, *, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one flag per ``setting`` field (all default to unset)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for field in dataclasses.fields(cls):
        if "env" not in field.metadata:
            continue
        help_text = (
            f"{field.metadata['help']} [env {field.metadata['env']}; default {field.default!r}]"
        )
        conv = _argparse_type(_field_parser(cls, field))
        flag = flag_name(field)
        hint = _hints(cls)[field.name]
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


def _env_values(cls: type, environ: Mapping[str, str] | None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in _settings(cls):
        names = env_names(field)
        # The primary variable counts when set, even empty; a fallback only when non-empty.
        name = next(
            (n for i, n in enumerate(names) if (environ.get(n) if i else n in environ)), None
        )
        if name is None:
            continue
        try:
            values[field.name] = _field_parser(cls, field)(environ[name])
        except (ValueError, ConfigError) as exc:
            # One line naming the variable: the parser's own traceback adds nothing.
            raise ConfigError(f"environment variable {name}={environ[name]!r}: {exc}") from None
    return values


def load_config(
    cls: type[C],
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    prog: str = "mx8",
    description: str = "",
) -> C:
    """Build ``cls`` from defaults, then ``MX8_*`` env vars, then ``--flags``."""
    values = _env_values(cls, environ)
    if argv is not None:
        parsed = build_parser(cls, prog=prog, description=description).parse_args(list(argv))
        for name, value in vars(parsed).items():
            if value is not None:
                values[name] = value
    return cls(**values)


def load_env(cls: type[C], environ: Mapping[str, str] | None = None, **overrides: Any) -> C:
    """Build ``cls`` from defaults, then env vars, then ``overrides`` (None values ignored)."""
    values = _env_values(cls, environ)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def config_reference_markdown(
    classes: Sequence[type],
    *,
    programs: Mapping[type, str] | None = None,
    env_readers: Mapping[type, str] | None = None,
) -> str:
    """The configuration reference in docs/, generated from the config classes.

    ``programs[cls]`` names the command whose ``--help`` lists the class's flags;
    ``env_readers[cls]`` says who reads an environment-only class (no flag column).
    """
    programs, env_readers = programs or {}, env_readers or {}
    out = [
        "# Configuration reference",
        "",
        "Generated from the config classes by",
        "`python scripts/gen_config_docs.py`; a test keeps it current.",
        "",
    ]
    for cls in classes:
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        out += [f"## `{cls.__module__}.{cls.__name__}`", "", doc, ""]
        with_flags = cls not in env_readers
        if cls in programs:
            out += [f"Flags of `{programs[cls]}`; each flag also has its variable.", ""]
        elif not with_flags:
            out += [f"Variables only (no flags), read by {env_readers[cls]}.", ""]
        if with_flags:
            out += ["| env var | flag | default | meaning |", "|---|---|---|---|"]
        else:
            out += ["| env var | default | meaning |", "|---|---|---|"]
        for field in _settings(cls):
            names = ", ".join(f"`{n}`" for n in env_names(field))
            flag = f" `{flag_name(field)}` |" if with_flags else ""
            out.append(f"| {names} |{flag} `{field.default!r}` | {field.metadata['help']} |")
        out.append("")
    return "\n".join(out)
