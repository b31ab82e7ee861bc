"""The `inheritlab` command line: run a study, watch it, pull its curves."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from inheritlab.infra.errors import InheritlabError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Controlled pre-training studies of bias inheritance.")

# True when this process is the `inheritlab` command itself (main()), not a caller of `app`
# (tests): `run` then leaves its logging set up until the process exits.
_OWN_PROCESS = False


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def run(
    spec: str = typer.Argument(..., help="Study spec YAML, or the name of a shipped study (e.g. 'demo')."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Where the study's artifacts go (default: runs/<study name>)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster: 'auto' on a head node, 'ray://head:10001' as client; default: a local Ray."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show Prefect's, Ray's and the workers' own output "
                                 "on the terminal (otherwise it is in RUN_DIR/logs/)."),
    as_json: bool = typer.Option(False, "--json", help="At the end print the run's paths and timings as JSON "
                                 "(stdout; progress lines go to stderr) instead of the summary table."),
) -> None:
    """Run every unfinished cell of a study, then fit and publish its curves.

    The terminal shows a line per cell stage, a study line every 30 s and a summary at the end; what Prefect, Ray and the training workers print goes to RUN_DIR/logs/ (with --verbose: here too).
    """
    from inheritlab.flows.preflight import check_before_start
    from inheritlab.flows.spec import load_spec

    try:
        study = load_spec(spec)
        # Before Prefect or Ray start: a missing path or an unwritable run directory fails now.
        target = check_before_start(study, run_dir or Path("runs") / study.name)
    except InheritlabError as exc:
        _fail(exc)
        return
    from inheritlab.flows import console

    t0 = time.perf_counter()
    # Set up before Prefect and Ray are imported: their settings are read when they start.
    with console.session(target, verbose=verbose, progress_to_stderr=as_json, restore=not _OWN_PROCESS) as term:
        from inheritlab.flows import interrupts
        from inheritlab.flows.study_flow import run_study
        from inheritlab.infra.errors import StudyStopped

        # The first Ctrl-C or SIGTERM stops the study gracefully, a second at once (flows/interrupts.py).
        interrupts.install()
        try:
            interrupts.start_prefect_server()
            out = run_study(study, target, ray_address)
        except StudyStopped as exc:
            term.end_display()
            if not as_json:
                typer.echo(console.render_summary(study, target, took_s=time.perf_counter() - t0, log=term), err=True)
            typer.secho(f"stopped: {exc}. Run the same command again to resume "
                        f"(`inheritlab run {spec}" + (f" --run-dir {run_dir}" if run_dir else "") + "`).",
                        fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # told in one paragraph; the traceback is in the log
            code = 2 if isinstance(exc, InheritlabError) else 1
            if code == 1 and verbose:
                raise
            term.end_display()
            logging.getLogger("inheritlab.flows.cli").error("the run failed", exc_info=exc)
            if not as_json and console.cells_started():
                typer.echo(console.render_summary(study, target, took_s=time.perf_counter() - t0, log=term), err=True)
            typer.secho("error: " + console.render_failure(exc, term), fg=typer.colors.RED, err=True)
            raise typer.Exit(code) from None
        finally:
            if not _OWN_PROCESS:
                interrupts.uninstall()
        term.end_display()
        if not as_json:
            typer.echo(console.render_summary(study, target, took_s=time.perf_counter() - t0,
                                              report=out.get("report") if isinstance(out, dict) else None, log=term))
    if as_json:
        typer.echo(json.dumps(out, indent=2))


@app.command()
def validate(
    spec: str = typer.Argument(..., help="Study spec YAML or shipped study name."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="The run directory `run` would use, checked for "
                                           "writing (not created); default: runs/<study name>."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Plan against this Ray cluster; default: this machine."),
) -> None:
    """Check a spec and print the plan: cells, resources per cell, estimated device-hours."""
    from inheritlab.flows.grid import expand_grid
    from inheritlab.flows.preflight import check_data, check_paths, check_run_dir, left_out
    from inheritlab.flows.scheduler import check_fits, plan, resolve
    from inheritlab.flows.spec import load_spec
    from inheritlab.flows.stages import resolve_use_gpu
    from inheritlab.infra.raycluster import init_ray, local_machine

    try:
        study = load_spec(spec)
        check_paths(study)
        target = check_run_dir(run_dir or Path("runs") / study.name, create=False)
        checked_s = check_data(study)
        cells = expand_grid(study)
        cluster = init_ray(ray_address) if ray_address else local_machine()
        use_gpu = resolve_use_gpu(study.train.use_gpu, cluster.gpus)
        cells = resolve(cells, cluster, use_gpu=use_gpu)
        check_fits(cells, cluster, use_gpu=use_gpu)
    except InheritlabError as exc:
        _fail(exc)
        return
    ex = study.execution
    rows = plan(cells, use_gpu=use_gpu, gpu_tflops=ex.gpu_tflops, cpu_gflops=ex.cpu_gflops)
    unit, rate = ("GPU", f"{ex.gpu_tflops:g} TFLOP/s per GPU") if use_gpu else ("CPU", f"{ex.cpu_gflops:g} GFLOP/s per worker")
    typer.echo(f"{study.name}: {len(cells)} cells on {cluster.address} ({cluster.nodes} node(s), {cluster.cpus:g} CPUs, "
               f"{cluster.gpus:g} GPUs); admitted largest first as resources free up")
    for r in rows:
        typer.echo(f"  {r['cell']}  {r['label']:40s} {r['workers']} x {r['cpus'] / r['workers']:g} CPU"
                   + (" + 1 GPU" if use_gpu else "") + f"  {r['flops']:.2e} FLOPs  ~{r['device_hours']:.2f} {unit}-h")
    total = sum(r["device_hours"] for r in rows)
    typer.echo(f"total ~{total:.2f} {unit}-hours at an assumed {rate} (execution.gpu_tflops / cpu_gflops)")
    typer.echo(f"data checked in {checked_s:.2f} s: every split opens, each shard's first sample reads, "
               f"tasks {', '.join(study.eval_tasks)} and the biases have what they need")
    for task_name, why in left_out(study).items():
        typer.echo(f"  left out: {task_name} — needs {why}")
    typer.echo(f"run directory {target} can be written")


@app.command()
def status(
    run_dir: Path = typer.Argument(..., help="A study's run directory."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Redraw until every cell is complete (Ctrl-C leaves)."),
    every: float = typer.Option(5.0, "--every", help="Seconds between redraws with --watch."),
) -> None:
    """Every cell of the study's grid and where it stands (done, running with its training step,
    failed, stopped at a checkpoint, not started), from the run directory alone."""
    from inheritlab.flows import console
    from inheritlab.flows.spec import StudySpec
    from inheritlab.infra.atomic import read_json
    from inheritlab.infra.rundir import RunDir

    run_ = RunDir.at(run_dir)
    if not run_.study.is_file():
        _fail(InheritlabError(f"{run_dir}: not a study's run directory (no study.json there)"))
    try:
        study = StudySpec.model_validate(read_json(run_.study))
    except Exception as exc:  # noqa: BLE001 - named, with the file
        _fail(InheritlabError(f"{run_.study}: cannot be read as a study spec: {exc}"))
        return

    def table() -> str:
        return console.render_summary(study, run_.root).lstrip("\n")

    def finished() -> bool:
        from inheritlab.flows.grid import expand_grid

        return all(run_.cell(c.cell_id).is_complete() for c in expand_grid(study))

    if not watch:
        typer.echo(table())
        return
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        with Live(get_renderable=lambda: Text(table()), console=Console(), refresh_per_second=1 / max(every, 1.0)) as live:
            while not finished():
                time.sleep(every)
                live.refresh()
    else:
        while True:
            typer.echo(table() + "\n")
            if finished():
                break
            time.sleep(every)


@app.command()
def curves(
    run_dir: Path = typer.Argument(..., help="A study's run directory (local path or fsspec URL)."),
    metric: str = typer.Option("acc1", help="Metric column value, e.g. acc1, recall@5."),
    task: str = typer.Option("zeroshot", help="Downstream task, e.g. zeroshot, linear_probe, retrieval_i2t."),
    split: str = typer.Option("id", help="Evaluation split: id or ood."),
    x: str = typer.Option("data_scale", help="Scale axis: data_scale, flops, samples_seen, params."),
    fmt: str = typer.Option("png", "--format", help="png | pdf | csv | latex"),
    out: Optional[Path] = typer.Option(None, help="Output directory (default: RUN_DIR/curves)."),
) -> None:
    """Aggregated scaling curves and fits for the paper."""
    from inheritlab.analysis.report import curves as make_curves

    if fmt not in ("png", "pdf", "csv", "latex"):
        _fail(InheritlabError(f"--format {fmt!r}: expected one of png, pdf, csv, latex"))
    try:
        paths = make_curves(str(run_dir), metric=metric, task=task, split=split, x=x, fmt=fmt, out=out or Path(run_dir) / "curves")
    except (InheritlabError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
        return
    for p in paths:
        typer.echo(str(p))


@app.command()
def server(
    host: str = typer.Option("127.0.0.1", help="Interface to bind the dashboard to."),
    port: int = typer.Option(4200, help="Dashboard port."),
) -> None:
    """Start a Prefect server (the dashboard). Runs report to it when PREFECT_API_URL is set."""
    exe = shutil.which("prefect")
    cmd = [exe] if exe else [sys.executable, "-m", "prefect"]
    cmd += ["server", "start", "--host", host, "--port", str(port)]
    api = f"http://{host}:{port}/api"
    typer.echo(f"dashboard: http://{host}:{port}  —  in other shells: export PREFECT_API_URL={api}")
    # The dashboard's pages call the API at PREFECT_UI_API_URL, which otherwise defaults to
    # port 4200 whatever --port says (the page then cannot reach its server).
    env = {**os.environ, "PREFECT_UI_API_URL": os.environ.get("PREFECT_UI_API_URL", api)}
    raise typer.Exit(subprocess.call(cmd, env=env))


@app.command()
def materialize(
    run_dir: Path = typer.Argument(..., help="A study's run directory."),
    cell_id: str = typer.Argument(..., help="The cell whose conditioned data to write (see `inheritlab status`)."),
    out: Path = typer.Option(..., "--out", help="Directory for the new shards."),
    samples_per_shard: int = typer.Option(1000, help="Samples per written shard."),
) -> None:
    """Write one cell's conditioned training data (the bias applied) as WebDataset shards."""
    from inheritlab.flows.stages import materialize_cell
    from inheritlab.infra.rundir import RunDir

    try:
        paths = materialize_cell(RunDir.at(run_dir), cell_id, out, samples_per_shard=samples_per_shard)
    except InheritlabError as exc:
        _fail(exc)
        return
    typer.echo(f"{len(paths)} shards in {out}")


@app.command("corruptors")
def list_corruptors() -> None:
    """Every bias type a spec can name, with its parameters (markdown)."""
    from inheritlab.corruptors.chain import corruptor_reference

    typer.echo(corruptor_reference())


@app.command()
def example(
    name: str = typer.Argument(..., help="The example: own-data or real-digits."),
    directory: Path = typer.Argument(..., help="Where its data and spec are written."),
) -> None:
    """Write an example's data and spec: ``own-data`` is img2dataset shards and a CLIP_benchmark
    suite (built offline from handwritten digits) and a study on them; ``real-digits`` the same
    digits with real MNIST digits as the OOD split, and a label-noise study over three seeds."""
    from inheritlab.flows.example_data import write_example

    try:
        spec = write_example(name, directory)
    except InheritlabError as exc:
        _fail(exc)
        return
    typer.echo(f"wrote {spec} and its data under {spec.parent / 'data'}; next:\n"
               f"  inheritlab validate {spec}\n  inheritlab run {spec} --run-dir {spec.parent / 'run'}")


@app.command("studies")
def list_studies() -> None:
    """List the example studies shipped with the package."""
    from inheritlab.flows.spec import builtin_specs

    for name in builtin_specs():
        typer.echo(name)


def main() -> None:  # pragma: no cover - console entry
    global _OWN_PROCESS
    _OWN_PROCESS = True
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
