"""What every fit checks before it starts: equal lengths, scales > 0, targets inside the residual
space's domain, finite values (non-finite rows dropped and counted), group indices 0 … G−1 with
none missing. Each error names the column, the row, the value and what is allowed.

Kept apart from the fitting engine (``analysis/fits.py``): the checks are the fits' contract with
their callers, and the same columns are checked by fits that are not least squares (the
frontier, the sigmoid of the two-step prediction, decision accuracy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from inheritlab.infra.errors import InheritlabError

if TYPE_CHECKING:
    from inheritlab.analysis.fits import Form


class FitInputError(InheritlabError):
    """Input a fit cannot use: the message names the column, the bad value and what is allowed."""


class InsufficientData(InheritlabError):
    """Too few distinct scales (or points) for the requested form."""


def as_2d(x: np.ndarray | Sequence[float]) -> np.ndarray:
    """``x`` as an (n, d) float array: a 1-D sequence of scales becomes one column.

    Every form takes X with one column per input (scale, then covariates such as a group index).
    """
    X = np.asarray(x, dtype=float)
    return X[:, None] if X.ndim == 1 else X


def stack_columns(where: str, **cols: Any) -> np.ndarray:
    """Named 1-D columns of equal length as one (n, k) float array; errors name the column."""
    arrs = {k: np.asarray(v, dtype=float) for k, v in cols.items()}
    for k, a in arrs.items():
        if a.ndim != 1:
            raise FitInputError(f"{where}: column {k!r} has shape {a.shape}; allowed: one value per row (1-D)")
    lengths = {k: len(a) for k, a in arrs.items()}
    if len(set(lengths.values())) > 1:
        raise FitInputError(f"{where}: columns have unequal lengths {lengths}; allowed: columns of equal length")
    return np.column_stack(list(arrs.values()))


def _first_bad(col: np.ndarray, bad: np.ndarray, rows: np.ndarray) -> str:
    i = int(np.flatnonzero(bad)[0])
    more = int(bad.sum()) - 1
    return f"{float(col[i])!r} at row {int(rows[i])}" + (f" (and {more} more row(s))" if more else "")


def check_inputs(form: "Form", x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Validated (X, y) of ``form``'s fit and the number of non-finite rows dropped.

    Raises :class:`FitInputError` naming the column, the row, the value and what is allowed.
    """
    X = as_2d(x)
    yv = np.asarray(y, dtype=float)
    where = f"{form.name} fit"
    if yv.ndim != 1:
        raise FitInputError(f"{where}: column 'y' has shape {yv.shape}; allowed: one value per row (1-D)")
    if X.ndim != 2 or X.shape[1] != len(form.columns):
        raise FitInputError(f"{where}: inputs have {X.shape[1] if X.ndim == 2 else X.ndim} column(s); "
                            f"allowed: exactly {list(form.columns)}")
    if len(X) != len(yv):
        raise FitInputError(f"{where}: column {form.columns[0]!r} has {len(X)} rows but 'y' has {len(yv)}; "
                            "allowed: columns of equal length")
    rows = np.arange(len(yv))
    finite = np.all(np.isfinite(X), axis=1) & np.isfinite(yv)
    X, yv, rows = X[finite], yv[finite], rows[finite]
    nd = form.scale_dims if form.scale_dims is not None else X.shape[1]
    for j in range(nd):
        bad = X[:, j] <= 0
        if bad.any():
            name = form.columns[j]
            raise FitInputError(f"{where}: column {name!r} has {_first_bad(X[:, j], bad, rows)}; "
                                f"allowed: {name} > 0 (a scale; the fit takes its logarithm)")
    floor, allowed = (0.0, "y > 0 (residuals are log y)") if form.space == "log" else (-1.0, "y > -1 (residuals are log(y + 1))")
    bad = yv <= floor
    if bad.any():
        raise FitInputError(f"{where}: column 'y' has {_first_bad(yv, bad, rows)}; allowed: {allowed}")
    for j in range(nd, X.shape[1]):
        _check_groups(where, form.columns[j], X[:, j], rows, form.n_groups)
    return X, yv, int((~finite).sum())


def _check_groups(where: str, name: str, g: np.ndarray, rows: np.ndarray, n_groups: int | None) -> None:
    """Group indices must be the integers 0 … G−1, each with points: a gap would invent a group."""
    bad = (g != np.round(g)) | (g < 0) | ((g >= n_groups) if n_groups is not None else False)
    top = f"{n_groups - 1}" if n_groups is not None else "G−1"
    if bad.any():
        raise FitInputError(f"{where}: column {name!r} has {_first_bad(g, bad, rows)}; allowed: integers 0…{top}")
    G = n_groups if n_groups is not None else int(g.max()) + 1 if len(g) else 0
    missing = sorted(set(range(G)) - set(int(v) for v in g))
    if missing:
        raise FitInputError(f"{where}: column {name!r} has no rows for index {missing[0]}"
                            + (f" (nor {missing[1:]})" if len(missing) > 1 else "")
                            + f"; allowed: indices 0…{G - 1}, each with at least one row (renumber the groups)")
