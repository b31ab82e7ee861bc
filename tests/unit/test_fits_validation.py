"""Every fit checks its input at the entry: the error names the column, the bad value and what is allowed."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from inheritlab.analysis.decision import decision_accuracy
from inheritlab.analysis.fits import FitInputError, InsufficientData
from inheritlab.analysis.fits_bnsl import fit_bnsl, select_breaks
from inheritlab.analysis.fits_chinchilla import fit_chinchilla
from inheritlab.analysis.fits_frontier import fit_frontier
from inheritlab.analysis.fits_power import fit_best_power_law, fit_joint_power_law, fit_power_law
from inheritlab.analysis.task_prediction import fit_sigmoid
from inheritlab.analysis.synthetic import power_law
from inheritlab.infra.errors import InheritlabError

X = np.geomspace(1e4, 1e9, 8)
Y = power_law(X, 10.0, 0.3, 0.1)


@pytest.mark.parametrize("fit", [
    lambda x, y: fit_power_law(x, y, n_boot=0),
    lambda x, y: fit_power_law(x, y, irreducible=False, n_boot=0),
    lambda x, y: fit_best_power_law(x, y, n_boot=0),
    lambda x, y: fit_bnsl(x, y, n_boot=0),
    lambda x, y: select_breaks(x, y, n_boot=0),
    lambda x, y: fit_frontier(x, y, n_boot=0),
])
def test_scale_must_be_positive(fit) -> None:  # type: ignore[no-untyped-def]
    x = X.copy()
    x[3] = 0.0
    with pytest.raises(FitInputError, match=r"column 'x' has 0\.0 at row 3; allowed: x > 0") as err:
        fit(x, Y)
    assert isinstance(err.value, InheritlabError)  # an application error: failed once, clearly, never retried
    x[3], x[5] = -1e5, -2.0
    with pytest.raises(FitInputError, match=r"-100000\.0 at row 3 \(and 1 more row\(s\)\)"):
        fit(x, Y)


def test_targets_must_be_in_the_residual_space() -> None:
    y = Y.copy()
    y[2] = 0.0
    # log residuals: y > 0 (a power law with b at its bound used to come back instead)
    with pytest.raises(FitInputError, match=r"column 'y' has 0\.0 at row 2; allowed: y > 0 \(residuals are log y\)"):
        fit_power_law(X, y)
    with pytest.raises(FitInputError, match=r"allowed: y > 0"):
        fit_frontier(X, y)
    # log(1 + y) residuals (BNSL): y > −1
    y[2] = -1.5
    with pytest.raises(FitInputError, match=r"column 'y' has -1\.5 at row 2; allowed: y > -1"):
        fit_bnsl(X, y)


def test_lengths_must_match() -> None:
    with pytest.raises(FitInputError, match=r"column 'x' has 8 rows but 'y' has 7; allowed: columns of equal length"):
        fit_power_law(X, Y[:-1])
    with pytest.raises(FitInputError, match=r"unequal lengths \{'n': 4, 'd': 3\}"):
        fit_chinchilla([1e6, 1e7, 1e8, 1e9], [1e8, 1e9, 1e10], [3.0, 2.5, 2.2, 2.0])
    with pytest.raises(FitInputError, match=r"unequal lengths \{'x': 8, 'group': 7\}"):
        fit_joint_power_law(X, np.zeros(7), Y)


def test_nonfinite_rows_are_dropped_and_counted() -> None:
    x, y = np.append(X, [np.nan, 1e6, np.inf]), np.append(Y, [0.5, np.nan, 0.2])
    r = fit_power_law(x, y, n_boot=20)
    clean = fit_power_law(X, Y, n_boot=20)
    assert r.n_dropped == 3 and r.n_points == 8 and "3 non-finite row(s) left out" in r.note
    assert r.params == clean.params and r.to_dict()["n_dropped_nonfinite"] == 3
    f = fit_frontier(np.append(X, np.nan), np.append(Y, 1.0), n_boot=10)
    assert f.n_dropped == 1 and f.to_dict()["n_dropped_nonfinite"] == 1
    with pytest.raises(InsufficientData):
        fit_power_law([np.nan] * 5, [1.0] * 5)


def test_group_indices_are_zero_to_g_minus_one_without_gaps() -> None:
    x = np.tile(X, 2)
    y = np.tile(Y, 2)
    # groups 0 and 2: the fit used to invent a group 1 with no points
    with pytest.raises(FitInputError, match=r"column 'group' has no rows for index 1; allowed: indices 0…2"):
        fit_joint_power_law(x, np.repeat([0, 2], 8), y)
    with pytest.raises(FitInputError, match=r"column 'group' has 0\.5 at row 0; allowed: integers 0…1"):
        fit_joint_power_law(x, np.r_[0.5, np.repeat([0, 1], 8)[1:]], y)
    with pytest.raises(FitInputError, match=r"column 'group' has -1\.0 at row 0"):
        fit_joint_power_law(x, np.r_[-1, np.repeat([0, 1], 8)[1:]], y)
    assert fit_joint_power_law(x, np.repeat([0, 1], 8), y, n_boot=0).form.n_groups == 2


def test_chinchilla_columns_are_named() -> None:
    n = np.repeat(np.geomspace(1e6, 1e9, 3), 3)
    d = np.tile(np.geomspace(1e8, 1e11, 3), 3)
    d[4] = -3.0
    with pytest.raises(FitInputError, match=r"column 'd' has -3\.0 at row 4; allowed: d > 0"):
        fit_chinchilla(n, d, 2.0 + 100 / n**0.3)
    with pytest.raises(FitInputError, match=r"loss='l1'; allowed: \['squares', 'huber'\]"):
        fit_chinchilla(n, np.abs(d), 2.0 + 100 / n**0.3, loss="l1")


def test_options_are_checked() -> None:
    with pytest.raises(FitInputError, match=r"n_boot=-1; allowed: n_boot ≥ 0"):
        fit_power_law(X, Y, n_boot=-1)
    with pytest.raises(FitInputError, match=r"bootstrap='jackknife'; allowed: \['wild', 'residual', 'pairs'\]"):
        fit_power_law(X, Y, bootstrap="jackknife")


def test_decision_accuracy_and_sigmoid_check_their_input() -> None:
    with pytest.raises(FitInputError, match=r"missing column\(s\) \['seed'\]"):
        decision_accuracy(pl.DataFrame({"bias_type": ["a"], "bias_level": [0.0], "data_scale": [1.0], "value": [0.5]}),
                          x="data_scale")
    with pytest.raises(FitInputError, match=r"column 'data_scale' has 0\.0; allowed: data_scale > 0"):
        decision_accuracy(pl.DataFrame({"bias_type": ["a"], "bias_level": [0.0], "data_scale": [0.0], "seed": [0],
                                        "value": [0.5]}), x="data_scale")
    with pytest.raises(FitInputError, match=r"column 'acc' has 1\.2; allowed: 0 ≤ acc ≤ 1"):
        fit_sigmoid([3.0, 2.5, 2.0, 1.5], [0.1, 0.2, 0.5, 1.2])
    with pytest.raises(FitInputError, match=r"column 'loss' has -2\.0; allowed: loss > 0"):
        fit_sigmoid([3.0, 2.5, 2.0, -2.0], [0.1, 0.2, 0.5, 0.6])
