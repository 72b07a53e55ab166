"""Typed access to a JSON object's fields, naming the offending field in its errors."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

from .errors import ManifestError


class Reader:
    """Typed field access that names the offending field in its errors."""

    def __init__(self, data: Any, where: str, path: Path):
        if not isinstance(data, dict):
            raise ManifestError(f"{path}: field '{where}' must be an object; re-export the bundle")
        self.data, self.where, self.path = data, where, path

    def fail(self, key: str, what: str) -> ManifestError:
        name = f"{self.where}.{key}" if self.where else key
        return ManifestError(f"{self.path}: field '{name}' {what}; re-export the bundle with spac-export")

    def get(self, key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
        if key not in self.data:
            if optional:
                return None
            raise self.fail(key, "is missing")
        value = self.data[key]
        if value is None and optional:
            return None
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise self.fail(key, f"has the wrong type ({type(value).__name__})")
        return value

    def enum(self, key: str, enum: type[Enum]) -> Any:
        value = self.get(key, str)
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(m.value for m in enum)  # type: ignore[attr-defined]
            raise self.fail(key, f"is '{value}', not one of {allowed}") from None

    def sub(self, key: str) -> "Reader":
        name = f"{self.where}.{key}" if self.where else key
        return Reader(self.get(key, dict), name, self.path)

    def ints(self, cls: type, keys: list[str]) -> Any:
        return cls(**{k: self.get(k, int) for k in keys})
