"""One rule for every by-name registry (objectives, data kinds, arena tasks, monitors): a name is given,
and a name is taken once."""
from __future__ import annotations

from typing import Any


def add(table: dict[str, Any], name: str, item: Any, what: str) -> Any:
    """Put ``item`` into ``table`` under ``name``; re-registering the same item is a no-op."""
    if not name:
        raise ValueError(f"{what} {getattr(item, '__name__', None) or type(item).__name__} has no name")
    old = table.get(name)
    if old is not None and old is not item:
        label = getattr(old, "__name__", None) or type(old).__name__
        raise ValueError(f"{what} name '{name}' is already registered (by {label})")
    table[name] = item
    return item
