"""`edgekit bench ARTIFACT --target T --budget p90=10ms` and `edgekit bench --config edgekit.toml`."""
from __future__ import annotations

import click

from edgekit.cli._common import emit_json, out, table


@click.command("bench")
@click.argument("artifact", required=False, type=click.Path())
@click.option("-t", "--target", default=None, help="Backend name, profile or .toml (default: the artifact's own, or onnxruntime for an .onnx).")
@click.option("--budget", "budgets", multiple=True, metavar="STAT=Nms", help="A latency budget, e.g. p99=33ms (repeatable; added to the target's).")
@click.option("--baseline", default=None, type=click.Path(), help="An earlier --json report, or the baseline artifact: fail on a significant slowdown. "
              "The baseline's artifact, when still there unchanged, is re-measured interleaved with this one (paired: drift cancels).")
@click.option("--paired/--unpaired", default=None, help="Require the interleaved re-measurement of the baseline's artifact, or compare with its recorded samples only "
              "(default: paired when the artifact is there).")
@click.option("--max-regression", default="10%", show_default=True, help="Slowdown (of --gate-stat) beyond which, if significant, the baseline gate fails.")
@click.option("--gate-stat", type=click.Choice(["floor", "p50", "mean"]), default="floor", show_default=True,
              help="What the baseline gate compares: floor = mean of the fastest 5% of runs, at least 3 (robust to noisy neighbours), p50, or mean.")
@click.option("--save-baseline", default=None, type=click.Path(dir_okay=False), help="Write this run as a baseline (with the artifact's path and SHA-256, so later runs re-measure it paired while it is there).")
@click.option("--config", "config", default=None, type=click.Path(dir_okay=False), help="A project file (edgekit.toml) of models x targets x budgets.")
@click.option("--data", default=None, help="Real feeds (a .npz, folder, or calibration .toml) instead of generated ones.")
@click.option("--batch", type=int, default=None, help="Batch size for generated feeds.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:SHAPE", help="Shape of a dynamic input, e.g. input_ids:1x128.")
@click.option("--min-duration", type=float, default=None, help="Seconds to measure at least (default: the target's, 3).")
@click.option("--max-duration", type=float, default=None, help="Cap when a budget's interval straddles the budget (default 30).")
@click.option("--min-iterations", type=int, default=None, help="Iterations to measure at least (default 10).")
@click.option("--warmup", type=float, default=None, help="Warm-up in milliseconds (default 200).")
@click.option("--junit", default=None, type=click.Path(dir_okay=False), help="Write JUnit XML: one testcase per model x target x budget.")
@click.option("--markdown", default=None, type=click.Path(dir_okay=False), help="Write a Markdown summary (e.g. $GITHUB_STEP_SUMMARY).")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Write a latency histogram and CDF as PNG.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), default=None, help="Write the results, with all samples, as JSON ('-' for stdout).")
def command(artifact: str | None, target: str | None, budgets: tuple[str, ...], baseline: str | None, paired: bool | None, max_regression: str, gate_stat: str,
            save_baseline: str | None, config: str | None, data: str | None, batch: int | None, shapes: tuple[str, ...],
            min_duration: float | None, max_duration: float | None, min_iterations: int | None, warmup: float | None,
            junit: str | None, markdown: str | None, plot: str | None, json_path: str | None) -> None:
    """Latency statistics with confidence intervals; exit 3 when a budget or the baseline gate fails.

    ARTIFACT is a compile output folder, a file in one, or an .onnx file (compiled for
    the target on the fly). A budget passes when its confidence interval lies under
    it and fails when it lies above; in between, edgekit measures longer (up to
    --max-duration) and says how it decided.
    """
    from edgekit.bench import report
    from edgekit.bench.project import load_project, parse_percent
    from edgekit.bench.run import BenchOptions, bench_artifact
    from edgekit.config import Budget
    from edgekit.errors import GateFailed, UsageError
    from edgekit.feeds import parse_shape_option
    from edgekit.files import write_json

    if (artifact is None) == (config is None):
        raise UsageError("give an ARTIFACT or --config edgekit.toml (one of them)", hint="see `edgekit bench --help`")
    common = dict(shapes=dict(parse_shape_option(s) for s in shapes), min_duration_s=min_duration, max_duration_s=max_duration,
                  min_iterations=min_iterations, warmup_ms=warmup, paired=paired)
    extra = tuple(Budget.parse(b) for b in budgets)
    jobs = []
    if config:
        for e in load_project(config):
            from edgekit.optimize.project import optimized_artifact

            art, tgt = optimized_artifact(e) if e.optimize else (e.model, e.target)
            jobs.append((art, tgt, BenchOptions(budgets=e.budgets + extra, baseline=e.baseline, max_regression=e.max_regression, gate_stat=gate_stat,
                                                         data=e.data or data, batch=e.batch or batch, name=e.name, **common)))
    else:
        jobs.append((artifact, target, BenchOptions(budgets=extra, baseline=baseline, max_regression=parse_percent(max_regression, "--max-regression"), gate_stat=gate_stat,
                                                    data=data, batch=batch, **common)))
    results = [bench_artifact(a, target=t, options=o) for a, t, o in jobs]
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
        report.write_markdown(results, markdown)
    if plot:
        report.plot(results, plot)
    if save_baseline:
        if len(results) != 1:
            raise UsageError("--save-baseline records one result; with --config, set baseline paths per entry")
        write_json(save_baseline, results[0])
    if not run["passed"]:
        failed = [f"{r['name']}@{r['target']}: " + ", ".join(
            [f"{b['budget']} ({b['stat']}={b['value']:.3f}ms)" for b in r["budgets"] if b["verdict"] != "pass"]
            + ([f"baseline regression: {r['baseline']['stat']} x{r['baseline']['ratio']:.3f} (p={r['baseline']['p_value']:.2g})"] if r.get("baseline") and r["baseline"]["regressed"] else []))
            for r in results if not r["passed"]]
        raise GateFailed("latency gate failed: " + "; ".join(failed))
