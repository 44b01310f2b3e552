"""Experiment configs in TOML, validated on load.

A schema maps each section to its fields, each field to a type (or a tuple
of allowed values) and a default (``REQUIRED`` for none). `load_config`
reads a file with the standard library's ``tomllib`` and fails with a
`ConfigError` naming the file, the field and what is allowed when a section
or field is unknown, missing or of the wrong type.
"""

from __future__ import annotations

import tomllib
from typing import Any

REQUIRED = object()


class ConfigError(ValueError):
    """A config file that does not match its schema."""


def _toml(value: Any) -> str:
    """A value as a config file writes it: TOML's true and false, not
    Python's True and False (strings as repr gives them, 'x', which TOML
    reads as a literal string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _is_allowed(value: Any, allowed: tuple) -> bool:
    """``value in allowed``, but a boolean only as a boolean: 1 is not true."""
    return any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in allowed)


def _type_name(kind: Any) -> str:
    if isinstance(kind, tuple):
        return "one of " + ", ".join(_toml(v) for v in kind)
    if isinstance(kind, list):
        return f"a list of {kind[0].__name__}"
    return kind.__name__


def _check_value(where: str, value: Any, kind: Any) -> Any:
    if isinstance(kind, tuple):  # allowed values
        if not _is_allowed(value, kind):
            raise ConfigError(f"{where} = {_toml(value)}; allowed: {', '.join(map(_toml, kind))}")
        return value
    if isinstance(kind, list):  # a list of one type
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be {_type_name(kind)}, got {type(value).__name__}")
        return [_check_value(f"{where}[{i}]", v, kind[0]) for i, v in enumerate(value)]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{where} must be {_type_name(kind)}, got {_toml(value)}")
    return value


def validate_table(given: Any, fields: dict, source: str, table: str) -> dict:
    """Checks one table against its fields; returns it with defaults filled in.

    Messages name the file (``source``) and each field as ``table.field``.
    """
    if not isinstance(given, dict):
        raise ConfigError(f"{source}: [{table}] must be a table")
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown field(s) {', '.join(f'{table}.{u}' for u in unknown)}; "
            f"allowed in [{table}]: {', '.join(fields)}"
        )
    out = {}
    for name, (kind, default) in fields.items():
        where = f"{source}: {table}.{name}"
        if name not in given:
            if default is REQUIRED:
                raise ConfigError(f"{where} is required ({_type_name(kind)})")
            out[name] = default
        else:
            out[name] = _check_value(where, given[name], kind)
    return out


def validate(raw: dict, schema: dict, source: str) -> dict:
    """Checks ``raw`` against ``schema``; returns it with defaults filled in."""
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise ConfigError(
            f"{source}: unknown section(s) {', '.join(unknown)}; allowed: {', '.join(schema)}"
        )
    return {
        section: validate_table(raw.get(section, {}), fields, source, section)
        for section, fields in schema.items()
    }


def read_toml(path: str) -> dict:
    """The parsed TOML file, or a `ConfigError` naming the file."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a TOML file (not UTF-8 text)") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def load_config(path: str, schema: dict) -> dict:
    """Reads and validates a TOML config file."""
    return validate(read_toml(path), schema, path)


ANALYZE_SCHEMA = {
    "network": {
        "sizes": ([int], REQUIRED),
        "activation": (("bent_identity", "tanh", "sigmoid", "softplus"), "bent_identity"),
        "init_seed": (int, 0),
        "init_scale": (("standard", "lecun"), "standard"),
    },
    "data": {
        "kind": (("four_region", "teacher_student"), "four_region"),
        "num_samples": (int, 10),
        "seed": (int, 0),
        "teacher_sizes": ([int], [2, 3, 4]),
    },
    "analysis": {
        "fit_first": (bool, True),
        "max_steps": (int, 100),
        "tol": (float, 1e-30),
    },
}
