"""Published scaling grids to check the fits against (the OpenCLIP grid of Cherti et al.).

``openclip_zeroshot`` reads ``zeroshot_results.csv`` of the published OpenCLIP scaling study;
``openclip_frontier`` fits the compute frontier of one downstream dataset's zero-shot error,
which on ImageNet reproduces the paper's E ≈ 5.86·C^−0.111 (C in GMACs). Run as a module to
regenerate the figure in the docs::

    python -m inheritlab.analysis.published ../shared/data/openclip-scaling-laws docs/figures
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl

from inheritlab.analysis.fits_frontier import FrontierFit, fit_frontier
from inheritlab.analysis.results import ResultsError

OPENCLIP_COLUMNS = ("arch", "samples_seen", "gmacs_total", "upstream_dataset", "downstream_dataset", "acc1")


def openclip_zeroshot(data_dir: str | Path, *, dataset: str = "imagenet1k", include_openai: bool = False) -> pl.DataFrame:
    """Rows of one downstream dataset, with ``error = 1 - acc1`` (OpenAI's CLIP-WIT rows left out by default)."""
    path = Path(data_dir) / "zeroshot_results.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: OpenCLIP results table not found")
    df = pl.read_csv(path)
    missing = [c for c in OPENCLIP_COLUMNS if c not in df.columns]
    if missing:
        raise ResultsError(f"{path}: missing column(s) {missing}")
    sub = df.filter(pl.col("downstream_dataset") == dataset)
    if not include_openai:
        sub = sub.filter(pl.col("upstream_dataset") != "CLIP-WIT")
    if sub.is_empty():
        raise ResultsError(f"{path}: no rows for downstream_dataset={dataset!r}")
    return sub.with_columns((1.0 - pl.col("acc1")).alias("error")).sort(["gmacs_total", "error", "arch"])


def openclip_frontier(data_dir: str | Path, *, dataset: str = "imagenet1k", n_bins: int = 5, n_boot: int = 1000) -> tuple[pl.DataFrame, FrontierFit]:
    """The rows and their frontier fit of error vs total training GMACs."""
    df = openclip_zeroshot(data_dir, dataset=dataset)
    fit = fit_frontier(df["gmacs_total"].to_numpy(), df["error"].to_numpy(), n_bins=n_bins, n_boot=n_boot)
    return df, fit


def plot_openclip_frontier(data_dir: str | Path, out_dir: str | Path, *, dataset: str = "imagenet1k") -> Path:
    """Write ``openclip_frontier.png``: all runs by upstream dataset, the frontier and the fit."""
    from inheritlab.analysis.plots import plot_frontier

    df, fit = openclip_frontier(data_dir, dataset=dataset)
    x, y = df["gmacs_total"].to_numpy(), df["error"].to_numpy()
    xs = np.geomspace(x.min() / 1.3, x.max() * 1.3, 200)
    lo, hi = fit.band(xs)
    title = (f"OpenCLIP {dataset} zero-shot error vs compute ({len(df)} runs): "
             f"E = {fit.beta:.2f}·$C^{{{fit.alpha:.3f}}}$")
    paths = plot_frontier(x, y, fit.frontier_x, fit.frontier_y, fit.predict, Path(out_dir) / "openclip_frontier",
                          xlabel="training compute C (GMACs)", ylabel="zero-shot error (1 − top-1)", title=title,
                          formats=("png",), groups=df["upstream_dataset"].to_list(), band=(xs, lo, hi),
                          caption=[f"Band: {fit.provenance.caption()}; {fit.n_points} runs, "
                                   f"{len(fit.frontier_x)} frontier points."])
    return paths[0]


if __name__ == "__main__":  # pragma: no cover - docs helper
    data = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/openclip-scaling-laws"
    out = sys.argv[2] if len(sys.argv) > 2 else "docs/figures"
    _, f = openclip_frontier(data)
    print(f"E = {f.beta:.4f} * C^{f.alpha:.4f}  ci={f.ci}  holdout={f.holdout}")
    print(plot_openclip_frontier(data, out))
