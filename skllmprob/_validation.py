"""Input validation: ``X`` as texts or a table of cells, ``y`` and ``sample_weight``.

Every check raises :class:`~skllmprob.exceptions.InputError` with a message that says
what was wrong and how to fix it.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import DataConversionWarning
from sklearn.utils.validation import validate_data

from .exceptions import InputError

__all__ = [
    "as_table",
    "check_X",
    "check_fit_input",
    "check_sample_weight",
    "check_y",
    "set_features",
]


def is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating) and math.isnan(value):
        return True
    return type(value).__name__ in ("NAType", "NaTType")


def describe_rows(idx: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in idx[:10])
    return shown + (f" and {len(idx) - 10} more" if len(idx) > 10 else "")


class _Table:
    """Validated input: 1-D texts or a 2-D table of cells."""

    def __init__(self, texts=None, columns=None, rows=None, feature_names=None) -> None:
        self.texts = texts
        self.columns = columns
        self.rows = rows
        self.feature_names = feature_names

    @property
    def is_1d(self) -> bool:
        return self.texts is not None

    def __len__(self) -> int:
        return len(self.texts) if self.is_1d else len(self.rows)

    @property
    def n_features(self) -> int:
        return 1 if self.is_1d else len(self.columns)


def as_table(X: Any, *, name: str = "X") -> _Table:
    """Check ``X`` and turn it into texts or rows of cells, with clear errors."""
    if X is None:
        raise InputError(f"{name} is None; pass a list of texts or a table of columns.")
    if isinstance(X, str | bytes):
        raise InputError(
            f"{name} is a single {type(X).__name__}; pass a list of texts, e.g. [text]."
        )
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise InputError(
            f"{name} is a sparse matrix; LogprobClassifier reads raw text. Pass the texts "
            "themselves (a list, array or pandas Series of str)."
        )
    if hasattr(X, "columns") and hasattr(X, "iloc"):  # a DataFrame
        table = _frame_table(X)
    else:
        table = _array_table(_as_array(X, name), name)
    _check_cells(table, name)
    return table


def _frame_table(X) -> _Table:
    """A DataFrame's rows; like scikit-learn, only string column names count as
    feature names."""
    names = np.asarray(X.columns, dtype=object)
    if all(isinstance(c, str) for c in X.columns):
        columns = list(X.columns)
    else:
        columns, names = [f"x{j}" for j in range(X.shape[1])], None
    rows = [tuple(r) for r in X.itertuples(index=False, name=None)]
    return _Table(columns=columns, rows=rows, feature_names=names)


def _as_array(X, name: str) -> np.ndarray:
    """``X`` (a Series, an array, a sequence of texts or of rows) as a 1-D or 2-D
    array."""
    if hasattr(X, "to_numpy") and getattr(X, "ndim", 1) == 1:  # a Series
        X = X.to_numpy(dtype=object)
    elif not isinstance(X, np.ndarray | list | tuple) and hasattr(X, "__array__"):
        X = np.asarray(X)
    if isinstance(X, np.ndarray):
        if X.ndim == 0:
            raise InputError(f"{name} is a scalar array; pass a list of texts.")
        if X.ndim > 2:
            raise InputError(
                f"{name} has {X.ndim} dimensions; pass a 1-D list of texts or a 2-D table."
            )
        return X
    try:
        seq = list(X)
    except TypeError as e:
        raise InputError(f"{name} of type {type(X).__name__} is not a sequence of texts.") from e
    if seq and all(isinstance(r, list | tuple | np.ndarray) for r in seq):
        lengths = {len(r) for r in seq}
        if len(lengths) != 1:
            raise InputError(
                f"{name} is a ragged nested list (rows of lengths {sorted(lengths)}); every "
                "row of a table needs the same number of columns."
            )
        arr = np.empty((len(seq), lengths.pop()), dtype=object)
        for i, r in enumerate(seq):
            arr[i, :] = list(r)
        return arr
    arr = np.empty(len(seq), dtype=object)
    arr[:] = seq
    return arr


def _array_table(arr: np.ndarray, name: str) -> _Table:
    if arr.ndim == 1:
        return _Table(texts=list(arr))
    if arr.shape[1] == 0:
        raise InputError(
            f"{name} has 0 feature(s) (shape={arr.shape}) while a minimum of 1 is "
            "required: it has no columns."
        )
    columns = [f"x{j}" for j in range(arr.shape[1])]
    return _Table(columns=columns, rows=[tuple(r) for r in arr.tolist()])


def _check_cells(table: _Table, name: str) -> None:
    if table.is_1d and set(map(type, table.texts)) <= {str}:  # plain texts: the usual case
        _check_encodable(table.texts, name)
        return
    if table.is_1d:
        bad_missing, bad_type = [], []
        for i, v in enumerate(table.texts):
            if isinstance(v, str):
                continue
            (bad_missing if is_missing(v) else bad_type).append(i)
        if bad_missing:
            raise InputError(
                f"{name} has missing values (None or NaN) at rows "
                f"{describe_rows(bad_missing)}; fill them (e.g. with '') or drop those "
                "rows."
            )
        if bad_type:
            i = bad_type[0]
            kind = type(table.texts[i]).__name__
            hint = " Decode bytes first (b.decode('utf-8'))." if kind == "bytes" else ""
            raise InputError(
                f"{name} must hold texts (str), but rows {describe_rows(bad_type)} hold "
                f"other types (row {i}: {kind}).{hint} To pass a table, give a 2-D array "
                "or a DataFrame. Reshape your data with X.reshape(-1, 1) for one column "
                "of values."
            )
        table.texts = [str(t) for t in table.texts]  # np.str_ -> str
        _check_encodable(table.texts, name)
        return
    for i, row in enumerate(table.rows):
        for j, v in enumerate(row):
            if isinstance(v, str):
                _check_encodable([v], f"{name} row {i}, column {table.columns[j]!r}:")
                continue
            if is_missing(v):
                raise InputError(
                    f"{name} has a missing value (None or NaN) in row {i}, column "
                    f"{table.columns[j]!r}; fill or drop it."
                )
            if isinstance(v, complex | np.complexfloating):
                raise InputError(
                    f"Complex data not supported: {name} row {i}, column "
                    f"{table.columns[j]!r} holds a complex number."
                )
            if isinstance(v, bool | numbers.Number):
                if isinstance(v, float | np.floating) and not math.isfinite(v):
                    raise InputError(
                        f"{name} holds an infinite value in row {i}, column "
                        f"{table.columns[j]!r}; replace it with a finite number or text."
                    )
                continue
            raise InputError(
                f"{name} row {i}, column {table.columns[j]!r} holds a "
                f"{type(v).__name__}; table cells must be str or numbers."
            )


def _check_encodable(texts: Sequence[str], name: str) -> None:
    """Reject lone surrogates: no backend can send or tokenize them."""
    try:
        "".join(texts).encode("utf-8")  # joining pairs no surrogates: same verdict
        return
    except UnicodeEncodeError:
        pass
    for i, t in enumerate(texts):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            where = f"{name} row {i}" if not name.endswith(":") else name[:-1]
            raise InputError(
                f"{where} is not valid Unicode (a lone surrogate {t[e.start]!r} at "
                f"character {e.start}); clean it, e.g. "
                "text.encode('utf-8', 'replace').decode('utf-8')."
            ) from e


def check_y(y: Any, n: int) -> np.ndarray:
    """``y`` as a 1-D object array of ``n`` hashable class labels."""
    y_arr = np.asarray(y, dtype=object)
    if y_arr.ndim != 1:
        if y_arr.ndim == 2 and y_arr.shape[1] == 1:
            warnings.warn(
                "A column-vector y was passed when a 1d array was expected; pass a "
                "1-D array of labels.",
                category=DataConversionWarning,
                stacklevel=5,  # the caller of fit
            )
            y_arr = y_arr.ravel()
        else:
            raise InputError(
                f"y should be a 1d array of labels, got shape {y_arr.shape}; "
                "LogprobClassifier does not do multi-output classification."
            )
    if len(y_arr) != n:
        raise InputError(f"X has {n} samples but y has {len(y_arr)}; they must match.")
    missing = [i for i, v in enumerate(y_arr) if is_missing(v)]
    if missing:
        raise InputError(
            f"y has missing labels (None or NaN) at rows {describe_rows(missing)}; "
            "drop those samples."
        )
    for v in y_arr:
        if isinstance(v, float | np.floating) and not float(v).is_integer():
            raise InputError(
                "Unknown label type: y holds continuous values; LogprobClassifier "
                "needs class labels."
            )
    try:
        hash(tuple(y_arr.tolist()))
    except TypeError as e:
        raise InputError(f"y holds unhashable labels ({e}).") from e
    return y_arr


def check_sample_weight(sample_weight, n: int) -> np.ndarray | None:
    """``sample_weight`` as ``n`` finite non-negative floats, not all zero (``None``
    stays ``None``; a scalar is repeated).

    >>> check_sample_weight(2, 3)
    array([2., 2., 2.])
    >>> check_sample_weight([1, -1], 2)
    Traceback (most recent call last):
    ...
    skllmprob.exceptions.InputError: sample_weight must be finite and non-negative.
    """
    if sample_weight is None:
        return None
    sw = np.asarray(sample_weight, dtype=float)
    if sw.ndim == 0:
        sw = np.full(n, float(sw))
    if sw.shape != (n,):
        raise InputError(
            f"sample_weight.shape == {sw.shape}, expected ({n},): one weight per sample."
        )
    if not np.all(np.isfinite(sw)) or (sw < 0).any():
        raise InputError("sample_weight must be finite and non-negative.")
    if not (sw > 0).any():
        raise InputError("Sample weights must contain at least one non-zero number.")
    return sw


def set_features(estimator, X, table: _Table | None) -> None:
    """Set ``n_features_in_`` (and ``feature_names_in_``) of ``estimator`` in ``fit``."""
    for attr in ("n_features_in_", "feature_names_in_"):
        if hasattr(estimator, attr):
            delattr(estimator, attr)
    if table is None:
        return  # zero-shot without data: any input whose columns fit the prompt
    if table.is_1d:
        estimator.n_features_in_ = 1
    else:
        validate_data(estimator, X, reset=True, skip_check_array=True)


def check_X(estimator, X) -> _Table:
    """``X`` for a fitted ``estimator``: non-empty, with the columns seen in ``fit``."""
    table = as_table(X)
    if len(table) == 0:
        raise InputError("X is empty; pass at least one text.")
    if not hasattr(estimator, "n_features_in_"):
        return table  # zero-shot fit without data: nothing to compare with
    if not table.is_1d:  # feature names and counts, as scikit-learn checks them
        validate_data(estimator, X, reset=False, skip_check_array=True)
    expected = estimator.n_features_in_
    if table.n_features != expected:
        raise InputError(
            f"X has {table.n_features} features, but {type(estimator).__name__} is "
            f"expecting {expected} features as input."
        )
    return table


def check_fit_input(X, y, *, labels_given: bool) -> tuple[bool, _Table | None, np.ndarray]:
    """``(zero_shot, table, y)`` of ``fit(X, y)``: zero-shot when ``X`` is ``None`` or
    empty (then ``labels`` must be given and ``y`` empty; ``table`` is ``None``
    without ``X``)."""
    zero_shot = X is None or (hasattr(X, "__len__") and len(X) == 0)
    if zero_shot:
        if not labels_given:
            raise InputError(
                "zero-shot fit needs labels: LogprobClassifier(labels=[...])"
                ".fit(None, None); or pass labelled X and y."
            )
        if y is not None and len(y) != 0:
            raise InputError("X is empty but y is not; pass both or neither.")
        # An empty table still tells the columns to expect.
        table = None if X is None else as_table(X)
        y_arr = np.empty(0, dtype=object)
    else:
        if y is None:
            raise InputError(
                "LogprobClassifier requires y to be passed, but the target y is None."
                " For zero-shot use call fit(None, None) with labels=[...]."
            )
        table = as_table(X)
        y_arr = check_y(y, len(table))
    return zero_shot, table, y_arr
