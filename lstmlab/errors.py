"""Bad input is reported as one line that names the key or file and what was expected."""

from __future__ import annotations

import dataclasses


class LabError(Exception):
    """Bad input from the user: one line on stderr, exit code 2, no result.csv written."""


class DataError(ValueError):
    """The data cannot be used: the one-line message names the file and what was expected."""


def one_line(exc: BaseException) -> str:
    """A one-line description of a Hydra, OmegaConf or lstmlab error."""
    from hydra.errors import InstantiationException, MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(exc, MissingConfigException):
        return _missing_option(exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or first_line(exc)}"
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(exc, InstantiationException) and isinstance(cause, (ValueError, TypeError, LabError)):
        return first_line(cause)
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        message = first_line(cause)
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and "not in" in message:
            return no_such_key(cause.full_key, schema_keys(getattr(cause, "object_type", None)))
        expected = _expected_type(message)
        if expected:
            return f"{cause.full_key}={cause.value}: expected {expected}"
        return f"{cause.full_key}: {message}"
    return _with_its_reason(exc)


def _with_its_reason(exc: BaseException) -> str:
    """The first line, and the next one when the first only announces it ("...while composing config:")."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[1]}"
    return first_line(exc)


# what OmegaConf says of a value of the wrong type -> what the key expects
_TYPE_MESSAGES = {
    "could not be converted to Integer": "an integer",
    "could not be converted to Float": "a number",
    "is not a valid bool": "true or false",
    "is not a ListConfig, list or tuple": "a list, e.g. [16,32]",
}


def _expected_type(message: str) -> str | None:
    return next((expected for said, expected in _TYPE_MESSAGES.items() if said in message), None)


def first_line(exc: BaseException) -> str:
    """The exception's message up to its first line break (its type's name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _missing_option(exc) -> str:
    """'In 'config': Could not find 'task/nope'' + the available options -> one line."""
    text = str(exc)
    options = [line.strip() for line in text.splitlines()
               if line.startswith("\t") and not line.strip().startswith(("provider=", "path="))]
    missing = getattr(exc, "missing_cfg_file", None) or ""
    group, _, option = missing.rpartition("/")
    if group and options:
        return f"{group}={option}: no such option; expected one of: {', '.join(options)}"
    return first_line(exc)


def no_such_key(key: str, known=()) -> str:
    """'model.hiden_size: no such key; expected one of: hidden_size, ...' (without the list if none)."""
    return f"{key}: no such key" + (f"; expected one of: {', '.join(known)}" if known else "")


def schema_keys(schema) -> list[str]:
    """The keys a user may set in a structured schema (a dataclass or one of its objects): its
    fields, less those starting with ``_`` (``_target_``); none if ``schema`` is not one."""
    if schema is None or not dataclasses.is_dataclass(schema):
        return []
    return [f.name for f in dataclasses.fields(schema) if not f.name.startswith("_")]
