"""`edgekit quantize MODEL -o OUT --calib SOURCE --target T`."""
from __future__ import annotations

import click

from edgekit.cli.common import float_list, human_bytes, json_option, out, run_and_emit, table


@click.command("quantize")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The QDQ ONNX file to write (a manifest OUT.json goes beside it).")
@click.option("--calib", required=True, help="Calibration data: a folder of .npy/.npz or images, a .npz, a calibration .toml manifest, a built-in manifest name (see `edgekit targets`), or pkg.module:callable.")
@click.option("-t", "--target", default="onnxruntime", show_default=True, help="Backend name, profile or .toml: picks the fastest accurate recipe for it.")
@click.option("--method", type=click.Choice(["minmax", "percentile", "entropy"]), default=None, help="Override the recipe's calibration method.")
@click.option("--percentile", type=float, default=99.999, show_default=True, help="With --method percentile.")
@click.option("--samples", type=int, default=None, help="Calibrate on N samples; when the ranges are still moving after N and the source has more, up to 4N (the report says so).")
@click.option("--exclude", multiple=True, help="Keep in float: a node name, a name pattern (fnmatch) or an op type (repeatable).")
@click.option("--exclude-file", default=None, type=click.Path(dir_okay=False), help="Node names to keep in float, one per line (e.g. OUT.exclude.txt of an earlier run).")
@click.option("--max-accuracy-drop", default=None,
              help="Replace the default check's bar: keep the most sensitive nodes in float until the drop is at most this "
                   "(cosine: 1 - worst cosine; top1: points; maxabs), on --eval data or the held-out slice; 'off' = --no-check.")
@click.option("--metric", default="cosine", show_default=True,
              help="The accuracy metric of --max-accuracy-drop: cosine, top1, maxabs, or pkg.module:callable(reference, candidate, labels) returning the drop.")
@click.option("--eval", "eval_source", default=None, help="Held-out data: accuracy (labels in file names *_LABEL.jpg) or agreement with FP32.")
@click.option("--resize", type=int, default=None, help="Images: resize the short side to N pixels.")
@click.option("--crop", type=int, default=None, help="Images: centre crop N x N.")
@click.option("--mean", default=None, help="Images: per-channel mean after scaling, e.g. 0.485,0.456,0.406.")
@click.option("--std", default=None, help="Images: per-channel std after scaling, e.g. 0.229,0.224,0.225.")
@click.option("--scale", type=float, default=1 / 255, show_default="1/255", help="Images: pixel scale before mean/std.")
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True)
@click.option("--channels", type=click.Choice(["RGB", "BGR", "GRAY"]), default="RGB", show_default=True)
@click.option("--no-cache", is_flag=True, help="Ignore and do not write the calibration cache.")
@click.option("--no-check", is_flag=True,
              help="Skip the check of INT8 against FP32 on held-out data (by default a slice of --calib, or --eval) and its float fallback.")
@click.option("--no-ptq", is_flag=True,
              help="Below the bar, go straight to the float fallback (skip SmoothQuant, cross-layer equalization, bias correction and the per-tensor method choice).")
@click.option("--executor", "executor_spec", default="local", show_default=True, metavar="local|ray[://HEAD:PORT]",
              help="Where the sensitivity search of the float fallback runs: here, or one Ray task per node ranked (edgekit[ray]).")
@json_option
def command(model: str, output: str, calib: str, target: str, method: str | None, percentile: float, samples: int | None,
            exclude: tuple[str, ...], exclude_file: str | None, max_accuracy_drop: float | None, metric: str, eval_source: str | None, resize: int | None, crop: int | None, mean: str | None,
            std: str | None, scale: float, layout: str, channels: str, no_cache: bool, no_check: bool, no_ptq: bool, executor_spec: str,
            json_path: str | None) -> None:
    """INT8 post-training quantization to QDQ ONNX, with the target's fastest accurate recipe.

    Statistics merge as samples stream through (memory does not grow with the number
    of samples); a cache keyed by model, data and recipe lets a re-run skip the data pass.

    Every run checks INT8 against FP32 on data it did not calibrate on (--eval, or a held-out
    slice of --calib). Below the bar it tries SmoothQuant, cross-layer equalization, bias correction
    and a per-tensor calibration method (each kept only if the held-out slice improves), then keeps
    the most sensitive nodes in float until the bar holds; when nothing meets it, it writes the
    best model and exits 3.
    """
    from edgekit.data.preprocess import ImageRecipe
    from edgekit.quantize import QuantizeOptions, quantize_model

    image_opts = any(v is not None for v in (resize, crop, mean, std))
    recipe = ImageRecipe(resize=resize, crop=crop, mean=float_list(mean) or (0.0,), std=float_list(std) or (1.0,), scale=scale,
                         layout=layout, channels=channels) if image_opts else None
    from edgekit.quantize import read_exclude_file

    if exclude_file:
        exclude = exclude + read_exclude_file(exclude_file)
    from edgekit.executors import executor_from_spec

    drop = _budget(max_accuracy_drop)
    check = not no_check and max_accuracy_drop != "off"
    with executor_from_spec(executor_spec if (check or drop is not None) else "local") as ex:
        options = QuantizeOptions(target=target, method=method, samples=samples, exclude=exclude, percentile=percentile,
                                  recipe=recipe, eval_source=eval_source, cache=not no_cache, max_accuracy_drop=drop, metric=metric,
                                  check=check, ptq=not no_ptq, executor=None if ex.name == "local" else ex)
        run_and_emit(json_path, lambda: quantize_model(model, output, calib=calib, options=options), _render)


def _budget(text: str | None) -> float | None:
    if text is None or text == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        from edgekit.errors import UsageError

        raise UsageError(f"--max-accuracy-drop {text!r} is not a number", hint="give a number such as 0.01, or 'off'") from None
    if value < 0:
        from edgekit.errors import UsageError

        raise UsageError("--max-accuracy-drop must be >= 0")
    return value


def _render_check(c: dict) -> None:  # noqa: ANN001
    if not c.get("ran"):
        return
    out(f"check on {c['on']} (INT8 on {c['int8_ran_on']}; bar: {c['bar']['text']}): {c['outcome']}; {c['summary']}")
    from edgekit.quantize.check import task_figure

    rows = [(o["output"], o["kind"], o["cosine_mean"], o["cosine_worst"], o["sqnr_db"], o["max_abs"], task_figure(o),
             "yes" if o["passed"] else "NO")
            for o in c.get("outputs", [])]
    if rows:
        default = "min_cosine" in c["bar"]  # with the user's budget, the per-output verdicts would be the default bar's: leave them out
        head = ["output", "kind", "cosine mean", "cosine worst", "SQNR dB", "max abs", "judged on"] + (["meets bar"] if default else [])
        out(table(head, [r if default else r[:-1] for r in rows]))
    if c.get("ptq"):
        out(f"PTQ algorithms ({c['ptq'].get('why', 'all INT8 misses the bar')}): {c['ptq']['summary']}")
        for st in c["ptq"]["steps"]:
            if st["applied"]:
                out(f"  {st['algorithm']}: shortfall {st['drop_before']:.4g} -> {st['drop_after']:.4g} ({'kept' if st['kept'] else 'dropped'}; "
                    f"{st['info']['sites']} site(s), {st['seconds']:.1f} s)")
            else:
                out(f"  {st['algorithm']}: not run ({st['why']})")
    hr = c.get("held_out_ranges") or {}
    if hr.get("tensors_beyond_range"):
        out(f"  held-out data left the calibrated range in {hr['tensors_beyond_range']} of {hr['tensors']} tensors "
            f"(worst {hr['worst_beyond_pct']:.1f}% beyond, {hr['worst_tensor']})")


def _render(r) -> None:  # noqa: ANN001
    out(f"{r.output}: {r.nodes_quantized} nodes in INT8, {len(r.nodes_float)} compute nodes in float"
        f"{' (excluded: ' + ', '.join(r.excluded) + ')' if r.excluded else ''}")
    from edgekit.quantize.settle import describe

    out(f"recipe {r.recipe['name']} ({r.recipe['why']}), {r.method} calibration on {r.calibration['samples_used']} samples"
        f" (cache {r.cache}); ranges {describe(r.settled, r.calibration['samples_used'])}")
    out(f"size {human_bytes(r.size_before)} -> {human_bytes(r.size_after)}, {r.seconds:.1f} s")
    if r.regions:
        from edgekit.quantize.regions import region_line

        out(f"regions: {region_line(r.regions)}")
    for n in r.notes:
        out(f"note: {n}")
    if r.check:
        _render_check(r.check)
    else:
        out("check: off (--no-check): INT8 was not compared with FP32")
    if r.fallback:
        f = r.fallback
        aim = "shortfall below the bar <= " if f["trigger"] == "default check" else f"{f['metric']} drop <= "
        out(f"float fallback ({f['trigger']}; aims at {aim}{f['budget']:g}): all INT8 {f['drop_full']:.4g} -> {f['drop_final']:.4g} "
            f"with {len(f['kept_in_float'])} of {f['candidates']} nodes in float ({'met' if f['met'] else 'NOT met'}; "
            f"{f['evaluations']} model evaluations, at most {f['worst_case_evaluations']})")
        if f.get("latency_ms"):
            out(f"  latency (ONNX Runtime, this CPU): all INT8 {f['latency_ms']['all_int8']:.2f} ms, with the fallback {f['latency_ms']['final']:.2f} ms")
        for k in f["kept_in_float"]:
            extra = f", {k['latency_cost_ms']:+.2f} ms in float" if k.get("latency_cost_ms") is not None else ""
            out(f"  float: {k['node']} ({k['op_type']}, alone costs {k['cost']:.4g}{extra})")
        out(f"  exclusion list: {r.output}.exclude.txt (pass it back with --exclude-file)")
        if f.get("ranked_on"):
            p = f["ranked_on"]
            out(f"  ranked {p['units']} nodes on {p['executor']}: " + ", ".join(f"{n[:12]} {c}" for n, c in p["nodes"].items()))
            for note in p["retried"]:
                out(f"  executor: {note}")
    if r.accuracy:
        a = r.accuracy
        if "top1_fp32" in a:
            out(f"top-1 on {a['samples']} labelled samples (INT8 on {a['int8_ran_on']}): FP32 {100 * a['top1_fp32']:.1f}%, INT8 {100 * a['top1_int8']:.1f}% "
                f"({a['top1_drop_points']:+.1f} points lost)")
        rows = [(o["output"], o["cosine"], o["sqnr_db"], o["max_abs"], o["top1_agreement"]) for o in a["outputs"]]
        out(table(["output", "cosine", "SQNR dB", "max abs", "top-1 agree"], rows))
        if a.get("speed"):
            sp = a["speed"]
            out(f"speed on {sp['backend']} here: INT8 {sp['speedup']:.2f}x FP32 (interval {sp['speedup_ci'][0]:.2f}-{sp['speedup_ci'][1]:.2f}; "
                f"floors {sp['fp32_floor_ms']:.2f} -> {sp['int8_floor_ms']:.2f} ms)")
