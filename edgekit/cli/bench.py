"""`edgekit bench ARTIFACT --target T --budget p90=10ms` and `edgekit bench --config edgekit.toml`."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import click

from edgekit.cli.common import emit_json, out, table
from edgekit.config import STATS


@click.command("bench")
@click.argument("artifact", required=False, type=click.Path())
@click.option("-t", "--target", default=None, help="Backend name, profile or .toml (default: the artifact's own, or onnxruntime for an .onnx).")
@click.option("--budget", "budgets", multiple=True, metavar="STAT=Nms", help=f"A latency budget, e.g. p99=33ms (repeatable; statistics: {', '.join(STATS)}). "
              "Replaces the project entry's and the target profile's budget of the same statistic.")
@click.option("--baseline", default=None, type=click.Path(), help="An earlier --json report, or the baseline artifact: fail when the slowdown's confidence interval lies above --max-regression. "
              "The baseline's artifact, when still there unchanged, is re-measured interleaved with this one (paired: drift cancels).")
@click.option("--paired/--unpaired", default=None, help="Require the interleaved re-measurement of the baseline's artifact, or compare with its recorded samples only "
              "(default: paired when the artifact is there).")
@click.option("--max-regression", default="10%", show_default=True, help="Slowdown (of --gate-stat) the baseline gate allows: it fails when the ratio's whole confidence interval lies above it, "
              "passes when the interval lies within it, and measures longer (then says undecided) while the interval holds it.")
@click.option("--gate-stat", type=click.Choice(["floor", "p50", "mean"]), default="floor", show_default=True,
              help="What the baseline gate compares: floor = mean of the fastest 5% of runs, at least 3 (robust to noisy neighbours), p50, or mean.")
@click.option("--save-baseline", default=None, type=click.Path(dir_okay=False), help="Write this run as a baseline (with the artifact's path and SHA-256, so later runs re-measure it paired while it is there).")
@click.option("--artifact", "bundle_artifact", default=None, help="With a bundle (.tar or folder): bench this artifact (as `edgekit verify` lists it) instead of the one edgekit.load would choose.")
@click.option("--update-baselines", is_flag=True, help="With --config: measure every entry on its own and (re)record its baseline "
              "(its `baseline` path or [defaults] baseline_dir/NAME.json, with a copy of the artifact beside it for paired runs).")
@click.option("--allow-model-change", is_flag=True, help="A baseline of another model (graph, input shapes, target or precision) is a deliberate "
              "change: report this run as a new baseline instead of failing (exit 2).")
@click.option("--device", default=None, metavar="NAME", help="Measure on this device over SSH: a [devices.NAME] of edgekit.toml (--config, else ./edgekit.toml) or ssh://user@host:port.")
@click.option("--config", "config", default=None, type=click.Path(dir_okay=False), help="A project file (edgekit.toml) of models x targets x budgets.")
@click.option("--data", default=None, help="Real feeds (a .npz, folder, or calibration .toml) instead of generated ones.")
@click.option("--batch", type=int, default=None, help="Batch size for generated feeds.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:SHAPE", help="Shape of a dynamic input, e.g. input_ids:1x128.")
@click.option("--min-duration", type=float, default=None, help="Seconds to measure at least (default: the target's, 3).")
@click.option("--max-duration", type=float, default=None, help="Cap on measuring longer while a budget's interval straddles the budget, or the baseline gate cannot decide (default 30).")
@click.option("--min-iterations", type=int, default=None, help="Iterations to measure at least (default 10).")
@click.option("--warmup", type=float, default=None, help="Warm-up in milliseconds (default 200).")
@click.option("--junit", default=None, type=click.Path(dir_okay=False), help="Write JUnit XML: one testcase per model x target x budget.")
@click.option("--markdown", default=None, type=click.Path(dir_okay=False), help="Write a Markdown summary (e.g. $GITHUB_STEP_SUMMARY).")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Write a latency histogram and CDF as PNG.")
@click.option("--strict-undecided", is_flag=True, help="Exit 3 when the baseline gate, or a budget, is still undecided after --max-duration "
              "(a machine too noisy to tell); without it that is a note and the budget is decided on its point estimate.")
@click.option("--strict", is_flag=True, help="Exit 3 when this machine's CPU lacks features the model's INT8 recipe assumed.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), default=None, help="Write the results, with all samples, as JSON ('-' for stdout).")
@click.option("--executor", "executor_spec", default="local", show_default=True, metavar="local|ray[://HEAD:PORT]",
              help="Where the entries run: here, or as Ray tasks (edgekit[ray]); an entry's `resource` pins its bench to the node that declares it. "
                   "With ray, an entry on a --device/`device` NAME is benched over SSH from the node that declares edgekit-device:NAME.")
def command(artifact: str | None, target: str | None, budgets: tuple[str, ...], baseline: str | None, paired: bool | None, max_regression: str, gate_stat: str,
            save_baseline: str | None, bundle_artifact: str | None, update_baselines: bool, allow_model_change: bool, device: str | None, config: str | None, data: str | None, batch: int | None, shapes: tuple[str, ...],
            min_duration: float | None, max_duration: float | None, min_iterations: int | None, warmup: float | None,
            junit: str | None, markdown: str | None, plot: str | None, json_path: str | None, executor_spec: str, strict: bool = False,
            strict_undecided: bool = False) -> None:
    """Latency statistics with confidence intervals; exit 3 when a budget or the baseline gate fails.

    ARTIFACT is a compile output folder, a file in one, an .onnx file (compiled for
    the target on the fly), or a bundle (the artifact edgekit.load would choose, with
    the budgets it was packed with). A budget passes when its confidence interval lies under
    it and fails when it lies above; in between, edgekit measures longer (up to
    --max-duration) and says how it decided. The baseline gate fails when the ratio's
    confidence interval lies above 1 + --max-regression, passes when it lies within it,
    and otherwise measures longer, then says "undecided" (exit 3 with
    --strict-undecided); on a machine busy with other work it says undecided where
    the load, not the build, could explain the ratio.

    Budgets: --budget beats the project entry's, which beats the target profile's, per
    statistic. --junit and --markdown (appended to, a section per run) are written on
    every exit, an error included.
    """
    import datetime

    from edgekit.bench import report
    from edgekit.bench.project import load_project, naming, parse_percent
    from edgekit.bench.baseline import save_baseline_report
    from edgekit.bench.run import BenchOptions, bench_artifact, check_bench
    from edgekit.config import Budget
    from edgekit.errors import GateFailed, UsageError
    from edgekit.data.feeds import parse_shape_option
    from edgekit.files import write_json

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"{Path(config).name if config else Path(artifact or '?').name}, {when}"
    results: list[dict[str, Any]] = []
    try:
        if (artifact is None) == (config is None):
            raise UsageError("give an ARTIFACT or --config edgekit.toml (one of them)", hint="see `edgekit bench --help`")
        from edgekit.executors import parse_spec

        parse_spec(executor_spec)
        if artifact is not None and device is None:  # a bundle: its verified, extracted artifact, removed when the command ends (--device: edgekit.devices ships it)
            from edgekit.bundle import artifact_from_bundle

            artifact = str(click.get_current_context().with_resource(artifact_from_bundle(artifact, name=bundle_artifact, target=target, announce=out if json_path != "-" else None)))
        if update_baselines and not config:
            raise UsageError("--update-baselines records a project file's baselines", hint="use it with --config edgekit.toml; for one artifact use --save-baseline PATH")
        if save_baseline and config:
            raise UsageError("--save-baseline records one result", hint="with --config use --update-baselines (each entry's `baseline` path or [defaults] baseline_dir)")
        if config and baseline:
            raise UsageError("--baseline gives one artifact's baseline; with --config each entry has its own",
                             hint='set baseline = "..." in the entry, or baseline_dir = "..." in [defaults]')
        if config and click.get_current_context().get_parameter_source("max_regression") == click.core.ParameterSource.COMMANDLINE:
            raise UsageError("--max-regression does not apply to a project file's entries",
                             hint='set max_regression = "10%" in its [defaults] or in an entry')
        common = dict(shapes=dict(parse_shape_option(s) for s in shapes), min_duration_s=min_duration, max_duration_s=max_duration,
                      min_iterations=min_iterations, warmup_ms=warmup, paired=paired, model_change="new" if allow_model_change else "error",
                      strict_undecided=strict_undecided)
        extra = tuple(Budget.parse(b) for b in budgets)
        jobs = []
        devices: list[str | None] = []  # parallel to jobs: where each is measured (None: here)
        labels: dict[str | None, str] = {}
        resources: dict[str | None, str | None] = {}  # --executor ray: the resource an entry's bench holds
        baselines: dict[str, str | None] = {}
        from edgekit.executors import executor_from_spec

        opened: list[Any] = []

        def executor() -> Any:  # joined once, when first needed (an `optimize = true` entry, or the run); left when the command ends
            if not opened:
                opened.append(click.get_current_context().with_resource(executor_from_spec(executor_spec)))
            return opened[0]

        if config:
            for e in load_project(config):
                labels[e.name], baselines[e.name], resources[e.name] = e.label, e.baseline, e.resource
                art, tgt = e.model, e.target
                if e.optimize:  # `optimize = true`: bench what `edgekit optimize` chooses (re-chosen when the model changes)
                    from edgekit.optimize.project import optimized_artifact

                    with naming(e.label, e.name):
                        art, tgt = optimized_artifact(e, executor=executor(), device=device or e.device, config=config)  # chosen where it is benched
                jobs.append((art, tgt, BenchOptions(budgets=extra, budget_layers=((f"{Path(config).name} entry {e.name}", e.budgets),),
                                                             baseline=None if update_baselines else e.baseline, baseline_missing="new",
                                                             max_regression=e.max_regression, gate_stat=gate_stat,
                                                             data=e.data or data, batch=e.batch or batch, name=e.name, **common)))
                devices.append(device or e.device)
                if update_baselines and not e.baseline:
                    raise UsageError(f"{e.label}: --update-baselines has nowhere to record this entry's baseline",
                                     hint='add baseline = "baselines/NAME.json" to it, or baseline_dir = "baselines" to [defaults]')
        else:
            jobs.append((artifact, target, BenchOptions(budgets=extra, baseline=baseline, max_regression=parse_percent(max_regression, "--max-regression"), gate_stat=gate_stat,
                                                        data=data, batch=batch, **common)))
            devices.append(device)
        for a, t, o in jobs:  # the whole project is checked before anything is measured
            with naming(labels[o.name], o.name) if config else contextlib.nullcontext():
                check_bench(a, target=t, options=o)
        from edgekit.devices import bench_jobs

        def bench_here(a: str, t: str | None, o: BenchOptions) -> dict[str, Any]:
            with naming(labels[o.name], o.name) if config else contextlib.nullcontext():
                return bench_artifact(a, target=t, options=o)

        from edgekit.executors.bench import run_bench_jobs

        results.extend(run_bench_jobs(jobs, devices, executor=executor(), over_ssh=lambda js: bench_jobs(js, config=config, bench_here=bench_here),
                                      labels=labels if config else None, resources=resources, config=config))
        if update_baselines:
            for r in results:
                path = baselines[r["name"]]
                assert path is not None
                save_baseline_report(r, path)
    except Exception as exc:  # the test tab and the job summary say what stopped the run, whatever it was
        _error_reports(exc, results, junit=junit, markdown=markdown, title=title)
        raise
    run = {"kind": "edgekit.bench-run", "schema": 1, "passed": all(r["passed"] for r in results), "results": results}
    if json_path != "-":
        out(table(report.HEADERS, report.rows(results)))
        for r in results:
            for n in r["notes"]:
                out(f"note: {r['name']}: {n}")
    emit_json(json_path, run)
    if junit:
        report.junit(results, junit)
    if markdown:
        report.write_markdown(results, markdown, title=title)
    if plot:
        report.plot(results, plot)
    if save_baseline:
        write_json(save_baseline, results[0])
    lacking = sorted({f for r in results for f in r.get("cpu_features_missing", [])})
    if strict and lacking:
        raise GateFailed(f"--strict: this machine lacks {', '.join(lacking)}, which the INT8 recipe assumed",
                         hint="bench on the device's kind of CPU (edgekit bench --device), or quantize for this one")
    if not run["passed"]:
        failed = [f"{r['name']}@{r['target']}: " + ", ".join(
            [f"{b['budget']} ({b['stat']}={b['value']:.3f}ms)" for b in r["budgets"] if b.get("failed", b["verdict"] != "pass")]
            + ([f"baseline {'regression' if r['baseline']['regressed'] else 'undecided (--strict-undecided)'}: {r['baseline']['stat']} "
                f"x{r['baseline']['ratio']:.3f} ({report.format_p(r['baseline']['p_value'])})"] if r.get("baseline") and report.gate_failed(r["baseline"]) else []))
            for r in results if not r["passed"]]
        raise GateFailed("latency gate failed: " + "; ".join(failed))


def _error_reports(exc: Exception, results: list[dict[str, Any]], *, junit: str | None, markdown: str | None, title: str) -> None:
    """--junit and --markdown for a run an error stopped: what was measured before it, and the error as
    a failed testcase (of its project entry, when it names one) and as the summary's last line."""
    from edgekit.bench import report
    from edgekit.errors import EdgekitError

    msg = str(exc) if isinstance(exc, EdgekitError) else f"{type(exc).__name__}: {exc} (a bug in edgekit)"
    writers = [lambda: report.junit(results, junit, error=msg, error_entry=getattr(exc, "entry", None))] if junit else []
    if markdown:
        writers.append(lambda: report.write_markdown(results, markdown, title=title, error=msg))
    for write in writers:
        try:
            write()
        except EdgekitError as werr:  # say so, and keep the error that stopped the run
            click.echo(f"warning: {werr}", err=True)
