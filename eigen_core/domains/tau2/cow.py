"""Copy-on-access databases: a fresh tau² environment without copying the whole DB.

tau²'s DBs are pydantic models whose top-level fields are dicts of records (airline: 300 flights,
500 users, 2,000 reservations). Parsing airline's db.json costs ~0.3 s, and so does a deep copy;
an episode touches a handful of records. ``cow_copy(db)`` returns a DB whose top-level dicts share
their records with the parsed original until a record is handed out (``d[k]``, ``get``,
``values``, ``items``, ``pop``, ``setdefault``), at which point that record is deep-copied into
this DB. So tools read and mutate private copies, the shared original never changes (checked by
``Tau2Domain.pristine()`` in the parity tests), and serialisation (hashing) sees the current
values. Anything that escapes these accessors would mutate the shared record: the parity tests run
every tool path of every task and then check the original's hash.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel


def _own(record: Any) -> Any:
    if isinstance(record, BaseModel):
        return record.model_copy(deep=True)
    import copy

    return copy.deepcopy(record)


class CowDict(dict):
    """A dict whose values are shared with a parsed original until first handed out."""

    def __init__(self, base: dict):
        super().__init__(base)
        self._owned: set = set()

    def _take(self, key: Any) -> Any:
        value = dict.__getitem__(self, key)
        if key not in self._owned:
            value = _own(value)
            dict.__setitem__(self, key, value)
            self._owned.add(key)
        return value

    def __getitem__(self, key: Any) -> Any:
        return self._take(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, key, value)
        self._owned.add(key)

    def get(self, key: Any, default: Any = None) -> Any:
        return self._take(key) if key in self else default

    def values(self) -> Iterator[Any]:  # type: ignore[override]
        return (self._take(k) for k in list(dict.keys(self)))

    def items(self) -> Iterator[tuple[Any, Any]]:  # type: ignore[override]
        return ((k, self._take(k)) for k in list(dict.keys(self)))

    def pop(self, key: Any, *default: Any) -> Any:
        if key in self:
            value = self._take(key)
            dict.__delitem__(self, key)
            return value
        if default:
            return default[0]
        raise KeyError(key)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key in self:
            return self._take(key)
        self[key] = default
        return default

    def copy(self) -> dict:
        return {k: self._take(k) for k in list(dict.keys(self))}

    def popitem(self) -> tuple[Any, Any]:
        key = next(reversed(list(dict.keys(self))))
        return key, self.pop(key)

    def __reduce__(self) -> Any:  # pickling / deepcopy: a plain dict of owned values
        return (dict, (self.copy(),))


def cow_copy(db: BaseModel) -> BaseModel:
    """A copy of ``db`` whose top-level dict fields are ``CowDict``s over ``db``'s (other fields
    are deep-copied: they are small)."""
    fields: dict[str, Any] = {}
    for name in type(db).model_fields:
        value = getattr(db, name)
        fields[name] = CowDict(value) if isinstance(value, dict) else _own(value)
    return type(db).model_construct(_fields_set=set(db.model_fields_set), **fields)
