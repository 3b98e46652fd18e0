"""JSON Schema checks that end in one line naming the key and what is allowed there.

jsonschema reports every violation, each with the whole sub-schema; for ``oneOf`` / ``anyOf`` it
reports each branch's failures. A user needs the one that matters: :func:`check_schema` raises a
:class:`~rationality.errors.ConfigError` for jsonschema's best match only (the deepest error of the
branch the value most resembles), worded per kind of violation with the allowed keys or values.
"""

from __future__ import annotations

import math
import os
import reprlib
from typing import Any, Iterator

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from rationality.errors import ConfigError

#: Type names as a message says them.
_TYPE_WORDS = {"number": "a number", "integer": "an integer", "string": "text", "boolean": "true or false",
               "array": "a list", "object": "a mapping", "null": "null"}
_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 60, 60, 6, 6
_short = _REPR.repr


def _is_text(_checker: Any, instance: Any) -> bool:
    """Strings, and paths given by programs (``pathlib.Path``), are ``type: string``."""
    return isinstance(instance, (str, os.PathLike))


_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("string", _is_text)
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)


def key_path(parts: Any) -> str:
    """``("models", "b16", "options")`` -> ``models.b16.options``; list positions as ``[i]``."""
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f"{'.' if path else ''}{part}"
    return path


def _words(schema_type: str | list[str]) -> str:
    types = [schema_type] if isinstance(schema_type, str) else schema_type
    return " or ".join(_TYPE_WORDS.get(t, t) for t in types)


def _one_line(error: ValidationError) -> ConfigError:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        allowed_words = f"allowed: {', '.join(allowed) or 'none'}"
        if len(unknown) == 1:
            return ConfigError(f"unknown key; {allowed_words}", key_path([*path, unknown[0]]))
        return ConfigError(f"unknown keys {', '.join(unknown)}; {allowed_words}", key_path(path))
    if error.validator == "required":
        missing = next(name for name in error.validator_value if name not in error.instance)
        return ConfigError("missing (required)", key_path([*path, missing]))
    if error.validator == "enum":
        return ConfigError(f"{_short(error.instance)} is not allowed; allowed: "
                           f"{', '.join(str(v) for v in error.validator_value)}", key_path(path))
    if error.validator == "type":
        return ConfigError(f"must be {_words(error.validator_value)}, got {_short(error.instance)}", key_path(path))
    return ConfigError(error.message.replace("\n", " "), key_path(path))


def _non_finite(value: Any, path: list[Any]) -> Iterator[tuple[list[Any], float]]:
    """(key path, value) of every NaN or infinite number inside ``value``."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, [*path, key])
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _non_finite(item, [*path, index])


def check_schema(instance: Any, schema: dict[str, Any]) -> None:
    """Validate ``instance``; numbers must also be finite (JSON Schema lets NaN pass every range).

    Args:
        instance: a config, spec or options mapping.
        schema: its JSON Schema (draft 2020-12; ``$ref``s resolve inside it).

    Raises:
        ConfigError: for the most relevant violation, its key relative to ``instance``.
    """
    for path, value in _non_finite(instance, []):
        raise ConfigError(f"must be a finite number, got {value}", key_path(path))
    error = best_match(_Validator(schema).iter_errors(instance))
    if error is not None:
        raise _one_line(error)

