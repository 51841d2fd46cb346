"""`edgekit optimize MODEL --target T --calib SOURCE -o DIR`: the fastest artifact that meets the budgets."""
from __future__ import annotations

import dataclasses

import click

from edgekit.cli.common import emit_json, float_list, json_option, out, table


@click.command("optimize")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for the winning artifact (replaced whole, only when there is a winner).")
@click.option("-t", "--target", default="onnxruntime", show_default=True, help="Backend name, profile or .toml; its budgets count too.")
@click.option("--calib", required=True, help="Calibration data for the INT8 candidates (as `edgekit quantize --calib`).")
@click.option("--eval", "eval_source", default=None, help="Held-out data to judge accuracy on (default: the last 20%, at most 64, of the calibration samples, not calibrated on).")
@click.option("--max-accuracy-drop", type=float, default=None, help="Accuracy budget against FP32 (default: cosine 0.01, top1 1 point).")
@click.option("--metric", default="cosine", show_default=True, help="cosine (1 - worst cosine), top1 (points), maxabs, or pkg.module:callable(reference, candidate, labels).")
@click.option("--budget", "budgets", multiple=True, metavar="STAT=Nms", help="A latency budget, e.g. p99=10ms (repeatable; added to the target's).")
@click.option("--candidates", default=None, help="Only these, comma-separated (e.g. fp32,int8,bf16); default: every precision the device runs.")
@click.option("--stat", type=click.Choice(["floor", "p50", "mean"]), default="floor", show_default=True, help="What 'fastest' compares: floor = mean of the fastest 5% of runs.")
@click.option("--samples", type=int, default=None, help="Calibrate on at most N samples.")
@click.option("--min-duration", type=float, default=None, help="Seconds of timing per candidate still running (default: the target's, 3).")
@click.option("--max-duration", type=float, default=None, help="Cap on timing while a budget's interval straddles the budget (default 30).")
@click.option("--resize", type=int, default=None, help="Images: resize the short side to N pixels.")
@click.option("--crop", type=int, default=None, help="Images: centre crop N x N.")
@click.option("--mean", default=None, help="Images: per-channel mean after scaling, e.g. 0.485,0.456,0.406.")
@click.option("--std", default=None, help="Images: per-channel std after scaling.")
@click.option("--scale", type=float, default=1 / 255, show_default="1/255", help="Images: pixel scale before mean/std.")
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True)
@click.option("--channels", type=click.Choice(["RGB", "BGR", "GRAY"]), default="RGB", show_default=True)
@click.option("--markdown", default=None, type=click.Path(dir_okay=False), help="Write the table as Markdown (e.g. $GITHUB_STEP_SUMMARY).")
@click.option("--executor", "executor_spec", default="local", show_default=True, metavar="local|ray[://HEAD:PORT]",
              help="Where the work runs: here, or on Ray (edgekit[ray]): compiles, accuracy and the race as one task on the node that declares "
                   "edgekit-target:TARGET (else any node), quantize's sensitivity units spread over the cluster.")
@click.option("--device", default=None, metavar="NAME", help="Race the candidates' latency on this device over SSH: a [devices.NAME] of edgekit.toml (--config, else ./edgekit.toml) or ssh://user@host:port. Built and judged for accuracy here.")
@click.option("--config", "device_config", default=None, type=click.Path(dir_okay=False), help="The edgekit.toml that names --device (default ./edgekit.toml).")
@json_option
def command(model: str, output: str, target: str, calib: str, eval_source: str | None, max_accuracy_drop: float | None, metric: str,
            budgets: tuple[str, ...], candidates: str | None, stat: str, samples: int | None, min_duration: float | None, max_duration: float | None,
            resize: int | None, crop: int | None, mean: str | None, std: str | None, scale: float, layout: str, channels: str, markdown: str | None,
            executor_spec: str, json_path: str | None, device: str | None = None, device_config: str | None = None) -> None:
    """The fastest artifact for a target that still meets the accuracy budget, chosen by measuring.

    Every precision the target's device runs (asked of the runtime: fp32, bf16, fp16, int8 and mixed
    INT8 + bf16 on OpenVINO), INT8 with quantize's float fallback when plain INT8 misses the budget;
    each compiled once, its accuracy measured against FP32 on held-out data, its latency measured
    interleaved with the others. Candidates that cannot win stop early. Exit 3 when none meets
    both budgets (the table names the closest; nothing is written to -o).
    """
    from edgekit.config import Budget
    from edgekit.errors import GateFailed, UsageError
    from edgekit.executors import executor_from_spec, parse_spec
    from edgekit.optimize import OptimizeOptions, optimize_model
    from edgekit.data.preprocess import ImageRecipe

    parse_spec(executor_spec)
    if samples is not None and samples < 1:
        raise UsageError("--samples must be at least 1")
    recipe = (ImageRecipe(resize=resize, crop=crop, mean=float_list(mean) or (0.0,), std=float_list(std) or (1.0,), scale=scale, layout=layout,
                           channels=channels)
              if any(v is not None for v in (resize, crop, mean, std)) else None)
    options = OptimizeOptions(target=target, eval_source=eval_source, max_accuracy_drop=max_accuracy_drop, metric=metric,
                              budgets=tuple(Budget.parse(b) for b in budgets), candidates=tuple(c.strip() for c in candidates.split(",") if c.strip()) if candidates else (),
                              recipe=recipe, samples=samples, min_duration_s=min_duration, max_duration_s=max_duration, stat=stat)
    if device_config is not None and device is None:
        raise UsageError("--config names the device to race on", hint="use it with --device NAME")
    if device is not None and executor_spec != "local":  # before the executor starts
        from edgekit.optimize.device import not_with_executor

        raise not_with_executor(device, executor_spec)
    if device is not None:
        options = dataclasses.replace(options, device=device, device_config=device_config)

    def emit(report: dict) -> None:
        from edgekit.optimize import report as rep

        if json_path != "-":
            out(table(rep.headers(report), rep.rows(report)))
            for line in rep.summary_lines(report):
                out(line)
        if markdown:
            from edgekit.files import write_text

            write_text(markdown, rep.markdown(report))
        emit_json(json_path, report)

    try:
        with executor_from_spec(executor_spec) as ex:
            report = optimize_model(model, output, calib=calib, options=dataclasses.replace(options, executor=None if ex.name == "local" else ex))
    except GateFailed as exc:
        if exc.result is not None:
            emit(exc.result)
        raise
    emit(report)
