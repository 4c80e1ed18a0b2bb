"""Shared helpers of curate's configs: typed dataclasses read from YAML, and their documentation.

Every command's settings are one dataclass (``curate.scoring.config.PipelineConfig`` for
``curate score``, ``curate.train.config.TrainConfig`` for ``curate train``, ...). The YAML keys, the
command-line flags (``curate.cli`` makes one per field, ``--section-field``), the Python API's
keyword arguments and the Parquet metadata keys all use the field's name, and every value passes
``check_type`` on its way in. Nothing here knows a particular command.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml


def check_type(key: str, value: Any, default: Any, annotation: Any) -> Any:
    """Coerce ``value`` to the type of a field (the type of its ``default``, or for a field whose
    default is ``None``, of its ``annotation``).

    An optional field (``X | None``) takes ``None``; an optional field whose default is ``None``
    also takes ``"auto"`` (same meaning: sized or chosen when the job starts). An ``int`` is
    accepted for a ``float`` field; a list of ints for a tuple of ints of the same length.

    Args:
        key: the setting's name for messages (``detect.long_side``).

    Raises:
        ValueError: the value cannot be of the field's type (the message names ``key``).
    """
    optional = "None" in str(annotation)
    if optional and default is None and isinstance(value, str) and value.strip().lower() == "auto":
        return None
    if value is None:
        if optional:
            return None
        raise ValueError(f"config key {key} may not be empty")
    if default is None:  # the kind comes from the annotation ("float | None", "int | None", ...)
        ann = str(annotation)
        default = 0.0 if "float" in ann else 0 if "int" in ann else "" if "str" in ann else None
    if isinstance(default, tuple):
        if isinstance(value, (list, tuple)) and len(value) == len(default) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return tuple(value)
        raise ValueError(f"config key {key} must be a list of {len(default)} integers, got {value!r}")
    elif isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, str) or "str" in str(annotation):
        if isinstance(value, str):
            return value
    else:
        return value
    expected = type(default).__name__ + (" or auto" if optional else "")
    raise ValueError(f"config key {key} must be {expected}, got {value!r} ({type(value).__name__})")


def check_choice(key: str, value: Any, choices) -> None:
    """Raise ``ValueError`` naming ``key`` and the choices when ``value`` is not one of ``choices``
    (a registry's keys, e.g. ``curate.stages.detect.DETECTORS``)."""
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")


def build_section(cls: type, data: dict[str, Any] | None, where: str) -> Any:
    """An instance of the dataclass ``cls`` from a mapping of its fields (missing: defaults).

    Args:
        data: ``field -> value`` (``None``: all defaults).
        where: the section's name for messages (``detect``), or ``""`` for a flat config.

    Raises:
        ValueError: not a mapping, an unknown key (the known ones are listed), or a value of the
            wrong type (``check_type``).
    """
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ValueError(f"config section {where!r} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in config section {where!r}; known: {sorted(known)}")
    defaults = cls()
    prefix = f"{where}." if where else ""
    return cls(**{name: check_field(prefix + name, value, known[name], getattr(defaults, name))
                  for name, value in data.items()})


POSITIVE = {"positive": True}  # field metadata: the setting must be > 0
AT_LEAST_0 = {"min": 0}  # field metadata: the setting must be >= 0


def check_field(key: str, value: Any, f: dataclasses.Field, default: Any) -> Any:
    """``check_type`` for the dataclass field ``f``, then what its metadata declares (the one
    place a setting's bounds are written): ``metadata["positive"]`` (> 0), bounds
    (``metadata["min"]`` and ``metadata["max"]``, inclusive) and the allowed values
    (``metadata["choices"]``, a registry's keys such as ``curate.stages.detect.DETECTORS``).
    ``None`` (``auto``) passes the bounds.

    Raises:
        ValueError: wrong type, out of bounds, or not a choice (the message names ``key``).
    """
    value = check_type(key, value, default, f.type)
    if value is not None and not isinstance(value, str):
        if f.metadata.get("positive") and value <= 0:
            raise ValueError(f"{key} must be a positive number, got {value!r}")
        low, high = f.metadata.get("min"), f.metadata.get("max")
        if low is not None and value < low:
            raise ValueError(f"{key} must be at least {low}, got {value!r}")
        if high is not None and value > high:
            raise ValueError(f"{key} must be at most {high}, got {value!r}")
    if "choices" in f.metadata:
        check_choice(key, value, f.metadata["choices"])
    return value


def check_dataclass(obj: Any, where: str = "") -> None:
    """``check_field`` on every field of the dataclass instance ``obj`` (one built in Python, not
    read from YAML).

    Raises:
        ValueError: the first field that fails, named ``where.field``.
    """
    defaults = type(obj)()
    for f in dataclasses.fields(obj):
        check_field(".".join(filter(None, [where, f.name])), getattr(obj, f.name), f, getattr(defaults, f.name))


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file (``{}`` for an empty file), read with ``yaml.safe_load``.

    Args:
        what: what the file is, for messages (``config``, ``train config``).

    Raises:
        FileNotFoundError: no such file. ValueError: not a file, not YAML, or not a mapping.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a file")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must be a mapping, got {type(data).__name__}")
    return data


_ATTR_LINE = re.compile(r"^\s{4,8}([a-z_][a-z0-9_]*(?:,\s*[a-z_][a-z0-9_]*)*):\s*(.*)$")


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description from the ``Attributes:`` section of ``cls``'s docstring (and of
    its bases'), joined into one line: the help text of the field's command-line flag.

    A line ``a, b, c: text`` documents three fields with the same text.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        text = klass.__doc__ or ""
        if "Attributes:" not in text:
            continue
        current: list[str] = []
        for line in text.split("Attributes:", 1)[1].splitlines():
            m = _ATTR_LINE.match(line)
            if m and len(line) - len(line.lstrip()) <= 8 and not line.strip().startswith(("``", "(")):
                current = [n.strip() for n in m.group(1).split(",")]
                if m.group(2).strip().startswith("see "):  # "see ActorPoolConfig": the base's text stays
                    current = [n for n in current if n not in docs]
                for name in current:
                    docs[name] = m.group(2).strip()
            elif line.strip() and current:
                for name in current:
                    docs[name] = (docs[name] + " " + line.strip()).strip()
            elif not line.strip():
                current = []
    return {k: v.replace("``", "") for k, v in docs.items()}
