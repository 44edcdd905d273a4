"""Typed configs: checked dataclass construction from dicts, config files (TOML, JSON, YAML), and
the one-line help of each field, read from the comment beside its default.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config value or key that is not allowed; the message names it."""


def field_types(cls: type) -> dict[str, Any]:
    """Each field's type, resolved from its annotation (fields only: no InitVar, no ClassVar)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def renamed_fields(cls: type) -> dict[str, str]:
    """``{old name: new name}`` of the settings renamed within the last release (``cls.renamed``);
    the old names are still accepted, with a deprecation warning."""
    return dict(getattr(cls, "renamed", {}))


def _allowed(tp: Any) -> tuple[set[type], bool]:
    """The plain types a field accepts, and whether it accepts None."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return {a for a in args if a is not type(None)}, type(None) in args


def type_name(tp: Any) -> str:
    """How a field's type reads in a message: ``int``, ``float or null``…"""
    kinds, optional = _allowed(tp)
    name = " or ".join(sorted(k.__name__ for k in kinds))
    return f"{name} or null" if optional else name


INT_LIMIT = 2**63  # ints must fit torch's int64 (sizes, seeds); larger ones fail deep inside torch


def coerce(name: str, value: Any, tp: Any, source: str) -> Any:
    """``value`` as the field's type (an int is accepted for a float), else ConfigError.

    Numbers must be finite and ints within int64: no setting means anything at ``inf`` or
    ``nan`` (``None`` is how a limit is switched off), and both would otherwise pass range
    checks written as comparisons and fail later, mid-run or inside torch.
    """
    kinds, optional = _allowed(tp)
    if value is None:
        if optional:
            return None
    elif isinstance(value, bool):
        if bool in kinds:
            return value
    elif isinstance(value, int) and (int in kinds or float in kinds):
        if not -INT_LIMIT <= value < INT_LIMIT:
            raise ConfigError(f"{source}: {name} must be {type_name(tp)} within ±2^63, got {value}")
        return value if int in kinds else float(value)
    elif isinstance(value, float) and float in kinds:
        if not math.isfinite(value):
            raise ConfigError(f"{source}: {name} must be a finite number, got {value!r}")
        return value
    elif isinstance(value, str) and str in kinds:
        return value
    raise ConfigError(f"{source}: {name} must be {type_name(tp)}, got {value!r} ({type(value).__name__})")


def check_config(cls: type, values: dict, source: str = "config", base: Any = None) -> Any:
    """Build ``cls`` from ``values`` (over ``base`` or the defaults): unknown keys and wrong types
    are refused naming the key. The settings' own ``check()`` is not run here: ``run_task`` runs
    it once, with the other checks of a run."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a table of settings, got {type(values).__name__}")
    hints = field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    renamed = renamed_fields(cls)
    values = dict(values)
    for old in [k for k in values if k in renamed and k not in hints]:
        new = renamed[old]
        if source != "checkpoint":  # a run saved before the rename is not the user's to fix
            warnings.warn(
                f"{source}: {old!r} is now {new!r}; the old name goes in the next release",
                DeprecationWarning,
                stacklevel=2,
            )
        value = values.pop(old)
        values.setdefault(new, value)
    unknown = [k for k in values if k not in hints]
    if unknown:
        close = {k: difflib.get_close_matches(k.replace("-", "_"), names, n=1) for k in unknown}
        hint = "".join(f" (did you mean {close[k][0]!r}?)" for k in unknown if close[k])
        raise ConfigError(
            f"{source}: unknown setting(s) {', '.join(map(repr, unknown))}{hint}; known: {', '.join(names)}"
        )
    current = dataclasses.asdict(base) if base is not None else {}
    merged = {**current, **{k: coerce(k, v, hints[k], source) for k, v in values.items()}}
    return cls(**merged)


def read_config_file(path: str | Path, task: str | None = None) -> dict:
    """Settings from a ``.toml``, ``.json`` or ``.yaml``/``.yml`` file (a flat table, or one table
    named ``train``), with keys in snake_case or kebab-case.

    A run's own ``config.json`` (``{"task": …, "config": {…}, …}``) gives its settings, all but
    ``out``: a config file starts a new run, in a folder of its own. With ``task``, a run of
    another task is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {str(path)!r}")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError(
                    f"{path}: YAML configs need PyYAML (pip install pyyaml); or use TOML or JSON"
                ) from None
            data = yaml.load(text, Loader=_yaml_loader(yaml))
        else:
            raise ConfigError(
                f"{path}: config files must end in .toml, .json, .yaml or .yml, got {suffix or 'no suffix'!r}"
            )
    except ConfigError:
        raise
    except Exception as e:  # the parsers' own errors carry line and column
        raise ConfigError(f"{path}: not valid {suffix[1:].upper()}: {e}") from None
    if isinstance(data, dict) and set(data) == {"train"}:
        data = data["train"]
    if isinstance(data, dict) and "task" in data and isinstance(data.get("config"), dict):  # a run's config.json
        if task is not None and data["task"] != task:
            raise ConfigError(
                f"{path}: the settings of a {data['task']!r} run, not {task!r}: "
                f"rnnkit train {data['task']} --config {path}"
            )
        data = {k: v for k, v in data["config"].items() if k != "out"}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings, got {type(data).__name__}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _yaml_loader(yaml) -> type:
    """PyYAML's safe loader, reading numbers as YAML 1.2 does.

    PyYAML follows YAML 1.1, where a float needs a dot: ``lr: 1e-3`` would load as the string
    ``"1e-3"`` and be refused as a wrong type. This loader also reads ``1e-3`` and ``3E5`` as
    floats (the YAML 1.2 core schema, and what TOML and JSON do).
    """

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def field_help(cls: type) -> dict[str, str]:
    """The comment beside each field's default in the class source (its help text)."""
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s+(\w+): [^=\n]+=[^#\n]*#\s*(.+)$", source, re.M):
            helps[m.group(1)] = m.group(2).strip()
    return helps
