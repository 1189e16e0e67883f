"""One schema for every recipe key: its type, its range and its default, checked one way.

    FIELDS = {"epochs": Int(8, lo=1), "lr": Float(0.1, lo=0.0), "name": Choice("a", ("a", "b"))}
    section = check_section(raw_table, FIELDS, "r.toml: [teacher]")   # defaults filled in
    value = FIELDS["epochs"].check(3, "--epochs")                       # a single value

Every mistake is one :class:`RecipeError` naming where (file and section, or the CLI flag),
the key, the value and what was expected:

    r.toml: [teacher] epochs = -2 is out of range; expected an integer >= 1
    r.toml: [model] width = '4' is a string; expected an integer >= 1
    r.toml: [train] has no key 'lr_decay'; did you mean 'lr'?

Types are strict: an integer key takes no float or string (``3.5``, ``"3"``), a boolean key
only ``true``/``false``; a float key takes an integer and stores it as a float.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from landscape.errors import LandscapeError


class RecipeError(LandscapeError, ValueError):
    """A recipe (or CLI override) that cannot be used; names the file, the key and the fix."""


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
               list: "a list", dict: "a table"}


def describe_type(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), f"a {type(value).__name__}")


def _fmt(x: float) -> str:
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)  # 1048576, not 1.04858e+06
    return repr(x) if isinstance(x, float) and (abs(x) >= 1e5 or 0 < abs(x) < 1e-3) else f"{x:g}"


@dataclass(frozen=True)
class Field:
    """One key: ``kind`` in int | float | bool | str | choice | int_list | str_list | epochs;
    bounds inclusive unless ``lo_open``; ``choices`` for kind "choice" (and the items of a
    "str_list"); ``nonempty``/``unique`` for lists; ``optional``: None is accepted too.

    "epochs" chooses checkpoints: ``"all"``, ``"first"``, ``"last"``, a count N ≥ 1 (N evenly
    spaced) or a list of epoch numbers."""

    kind: str
    default: Any
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple = ()
    nonempty: bool = False
    unique: bool = False
    optional: bool = False

    def _bounds(self) -> str:
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            return f" in {'(' if self.lo_open else '['}{_fmt(lo)}, {_fmt(hi)}]" \
                if self.kind == "float" else f" from {_fmt(lo)} to {_fmt(hi)}"
        if lo is not None:
            return f" {'>' if self.lo_open else '>='} {_fmt(lo)}"
        if hi is not None:
            return f" <= {_fmt(hi)}"
        return ""

    def expected(self) -> str:
        """What the key takes, in words (used in every message)."""
        return self._expected() + (" (or nothing)" if self.optional else "")

    def _expected(self) -> str:
        if self.kind == "epochs":
            return "'all', 'first', 'last', a count >= 1 or a list of epoch numbers"
        if self.kind == "str_list":
            items = f"from {', '.join(map(repr, self.choices))}" if self.choices else "of strings"
            return ("a non-empty " if self.nonempty else "a ") + f"list {items}"
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "int_list":
            return ("a non-empty " if self.nonempty else "a ") + \
                f"list of {'distinct ' if self.unique else ''}integers{self._bounds()}"
        noun = {"int": "an integer", "float": "a number", "bool": "true or false",
                "str": "a string"}[self.kind]
        return noun + self._bounds()

    def _in_range(self, x) -> bool:
        if self.lo is not None and (x < self.lo or (self.lo_open and x == self.lo)):
            return False
        return self.hi is None or x <= self.hi

    def check(self, value: Any, where: str) -> Any:
        """``value`` if it fits (a float key's integer becomes a float), else RecipeError."""
        bad_type = RecipeError(f"{where} = {value!r} is {describe_type(value)}; expected {self.expected()}")
        if value is None and self.optional:
            return None
        if self.kind == "epochs":
            if value in ("all", "first", "last") or (type(value) is int and value >= 1) or (
                    isinstance(value, list) and value and all(type(v) is int and v >= 0 for v in value)):
                return value
            raise RecipeError(f"{where} = {value!r}; expected {self.expected()}")
        if self.kind == "str_list":
            if isinstance(value, str) and self.choices:
                value = [value]  # one choice where a list is expected
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise bad_type
            bad = [v for v in value if self.choices and v not in self.choices]
            if bad or (self.nonempty and not value):
                close = difflib.get_close_matches(str(bad[0]), self.choices, n=1, cutoff=0.5) if bad else []
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise RecipeError(f"{where} = {value!r}; expected {self.expected()}{hint}")
            return list(value)
        if self.kind == "choice":
            if value in self.choices and type(value) is type(self.choices[0]):
                return value
            close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RecipeError(f"{where} = {value!r} is not one of "
                              f"{', '.join(map(str, self.choices))}{hint}")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad_type
            return value
        if self.kind == "str":
            if not isinstance(value, str):
                raise bad_type
            return value
        if self.kind == "int_list":
            if not isinstance(value, list) or not all(type(v) is int for v in value):
                raise bad_type
            if (self.nonempty and not value) or not all(self._in_range(v) for v in value) \
                    or (self.unique and len(set(value)) != len(value)):
                raise RecipeError(f"{where} = {value!r} is out of range; expected {self.expected()}")
            return list(value)
        if self.kind == "int":
            if type(value) is not int:
                raise bad_type
        elif self.kind == "float":
            if type(value) not in (int, float):
                raise bad_type
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise RecipeError(f"{where} = {value!r}; expected a finite number: {self.expected()}")
        if not self._in_range(value):
            raise RecipeError(f"{where} = {value!r} is out of range; expected {self.expected()}")
        return value


def Int(default, lo=None, hi=None) -> Field:  # noqa: N802 - reads like a type in a schema
    return Field("int", default, lo, hi)


def Float(default, lo=None, hi=None, lo_open=False, optional=False) -> Field:  # noqa: N802
    return Field("float", default, lo, hi, lo_open, optional=optional)


def Bool(default) -> Field:  # noqa: N802
    return Field("bool", default)


def Str(default) -> Field:  # noqa: N802
    return Field("str", default)


def Choice(default, choices: Iterable) -> Field:  # noqa: N802
    return Field("choice", default, choices=tuple(choices))


def IntList(default, lo=None, nonempty=False, unique=False) -> Field:  # noqa: N802
    return Field("int_list", default, lo, nonempty=nonempty, unique=unique)


def StrList(default, choices: Iterable = (), nonempty=False, optional=False) -> Field:  # noqa: N802
    return Field("str_list", default, choices=tuple(choices), nonempty=nonempty, optional=optional)


def Epochs(default) -> Field:  # noqa: N802
    return Field("epochs", default)


def check_keys(section: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Raise :class:`RecipeError` for the first key of ``section`` not in ``allowed``.

    The message names the key, where it was found, and the closest allowed key
    (``difflib``), e.g. ``[train] has no key 'lr_decay'; did you mean 'gamma'?``.
    """
    allowed = set(allowed)
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RecipeError(f"{where} has no key '{key}'{hint} "
                              f"(allowed: {', '.join(sorted(allowed))})")


def check_section(given: Any, fields: Mapping[str, Field], where: str,
                  defaults: bool = True) -> dict:
    """Check a table against ``fields``: unknown keys, then each value's type and range.

    Returns a new dict: every key of ``fields`` (defaults for the missing ones) when
    ``defaults``, else only the keys given. ``where`` prefixes every message, e.g.
    ``"analyses/x.toml: [train]"``.
    """
    if not isinstance(given, Mapping):
        raise RecipeError(f"{where} must be a table, not {describe_type(given)}")
    check_keys(given, fields, where)
    out = {k: copy.deepcopy(f.default) for k, f in fields.items()} if defaults else {}
    for key, value in given.items():
        out[key] = fields[key].check(value, f"{where} {key}")
    return out


def defaults_of(fields: Mapping[str, Field]) -> dict:
    """``{key: default}`` of a schema (a fresh copy)."""
    return {k: copy.deepcopy(f.default) for k, f in fields.items()}
