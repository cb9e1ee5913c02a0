"""Typed results and their one JSON encoding, which keeps +inf, nan and "not reached" apart.

Three different things can stand where a time is expected, and classdiff never lets one stand for another:

========================  ==========================  ===================================================
value in Python           JSON                        meaning
========================  ==========================  ===================================================
a finite float            a number                    the event happened at that time
``math.inf``              ``"inf"``                   the quantity is infinite by definition (e.g. a class
                                                      committed from the start, a gap that never closes)
:data:`NOT_REACHED`       ``"not reached"``           the event did not happen within the measured window
``math.nan``              ``"nan"``                   not computed / undefined (no data to compute it)
``None``                  ``null``                    the field does not apply (absent)
========================  ==========================  ===================================================

:func:`encode` turns dataclasses, mappings, sequences, numpy scalars and arrays, paths and the values above
into plain JSON values; :func:`decode` is its inverse on the special strings. :func:`format_value` writes the
same distinctions in text tables. :func:`reached` converts the read-off convention of
:mod:`classdiff.core.readoff` (nan where a curve never crosses its level) into :data:`NOT_REACHED`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

__all__ = [
    "NOT_REACHED",
    "NotReached",
    "Time",
    "decode",
    "encode",
    "format_value",
    "is_reached",
    "reached",
    "time_or_nan",
]


class NotReached:
    """The single value :data:`NOT_REACHED`: an event that did not happen within the measured window."""

    _instance: NotReached | None = None

    def __new__(cls) -> NotReached:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_REACHED"

    def __str__(self) -> str:
        return "not reached"

    def __reduce__(self) -> str:  # pickles (dask) as the singleton
        return "NOT_REACHED"

    def __bool__(self) -> bool:
        return False


NOT_REACHED: Final = NotReached()

#: a time read off a curve: a float (finite or +inf), :data:`NOT_REACHED`, or nan for "not computed"
Time = float | NotReached

_SPECIAL_TEXT: Final = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan, "not reached": NOT_REACHED}


def reached(value: Any) -> Time:
    """A read-off time as a :data:`Time`: nan (the curve never got there) becomes :data:`NOT_REACHED`."""
    if value is NOT_REACHED:
        return NOT_REACHED
    v = float(value)
    return NOT_REACHED if math.isnan(v) else v


def is_reached(value: Any) -> bool:
    """True for a time at which something happened (a finite or infinite float), False otherwise."""
    return value is not None and value is not NOT_REACHED and not (isinstance(value, float) and math.isnan(value))


def time_or_nan(value: Any) -> float:
    """A float for arithmetic: the time itself, nan for :data:`NOT_REACHED` or ``None``."""
    if value is None or value is NOT_REACHED:
        return math.nan
    return float(value)


def _float(v: float) -> Any:
    if math.isfinite(v):
        return v
    if math.isnan(v):
        return "nan"
    return "inf" if v > 0 else "-inf"


def encode(obj: Any) -> Any:
    """Plain JSON value of ``obj`` (dataclasses by their fields; non-finite floats as the strings above)."""
    if obj is NOT_REACHED:
        return "not reached"
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        to_dict = getattr(obj, "to_dict", None)
        if callable(to_dict):
            return encode(to_dict())
        return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [encode(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return encode(obj.tolist())
    if isinstance(obj, np.generic):
        return encode(obj.item())
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, float):
        return _float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def decode(obj: Any) -> Any:
    """Inverse of :func:`encode` on values: "inf", "-inf", "nan", "not reached" become the Python values."""
    if isinstance(obj, str):
        return _SPECIAL_TEXT.get(obj, obj)
    if isinstance(obj, Mapping):
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


def format_value(value: Any, spec: str = ".4g") -> str:
    """Text of a result value for tables: numbers by ``spec``; "inf", "not reached", "nan", "-" for None."""
    if value is None:
        return "-"
    if value is NOT_REACHED:
        return "not reached"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return format(v, spec)
    return str(value)
