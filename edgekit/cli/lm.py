"""`edgekit lm export|quantize|bench`: generative decoders through the same pipeline, in their own units."""
from __future__ import annotations

from typing import Any

import click

from edgekit.cli.common import human_bytes, json_option, out, run_and_emit, table


@click.group("lm")
def command() -> None:
    """Generative decoders (causal LMs): export with the KV cache, weight-only INT8/INT4, bench in tokens.

    \b
      edgekit lm export edgekit.examples.smollm2:model -o out/lm
      edgekit lm quantize out/lm -o out/lm-ov-int8 --target openvino --bits 8
      edgekit lm bench out/lm-ov-int8 --budget ttft=500ms --budget tpot_p99=100ms --json out/lm-bench.json
    """


@command.command("export")
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="The folder to write (model.onnx, tokenizer, lm.json).")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--text", default="python-docs", show_default=True, help="Real text for the parity check: a UTF-8 file or python-docs.")
@click.option("--openvino/--no-openvino", default=None,
              help="Also OpenVINO's own conversion from PyTorch (openvino_model.xml: fused attention, the fast decode of "
                   "--target openvino). Default: when OpenVINO is installed.")
@click.option("--onnx-graph", "graph", type=click.Choice(["auto", "builder", "trace"]), default="auto", show_default=True,
              help="Who makes the ONNX graph: onnxruntime-genai's model builder (fused GroupQueryAttention, the fast decode "
                   "of --target onnxruntime), the trace of the PyTorch model (any architecture), or auto: the builder when "
                   "onnxruntime-genai is installed and knows the architecture, else the trace.")
@json_option
def export_cmd(source: str, output: str, opset: int, text: str, openvino: bool | None, graph: str, json_path: str | None) -> None:
    """Export SOURCE (a Hugging Face folder, a .gguf file, or module:callable -> (model, tokenizer)) to ONNX with
    its KV cache, and check prefill logits and greedy decode steps against PyTorch on real text (exit 3 if not)."""
    from edgekit.llm.export import export_causal_lm

    run_and_emit(json_path, lambda: export_causal_lm(source, output, opset=opset, text=text, openvino=openvino, graph=graph), _render_export)


def _render_export(r: dict[str, Any]) -> None:
    m = r["meta"]
    out(f"{r['out']}: {m['extra'].get('architecture')} with {m['extra'].get('parameters', 0) / 1e6:.1f} M parameters, "
        f"{m['layers']} layers, cache {m['kv_heads']} heads x {m['head_dim']}")
    out(f"ONNX graph by {m['extra'].get('onnx_graph')}" + (f" (the builder did not: {m['extra']['onnx_graph_builder_refused']})"
                                                           if m["extra"].get("onnx_graph_builder_refused") else ""))
    for name, p in (("ONNX", r["parity"]), ("OpenVINO", r.get("parity_openvino"))):
        if p:
            out(f"{name} parity with PyTorch on {p['prompt_tokens']} tokens of real text: prefill logits {p['prefill_logits_max_rel_diff']:.2e} "
                f"relative (bar {p['rtol']:g}), {p['greedy_steps']} greedy tokens {'equal' if p['greedy_tokens_equal'] else 'DIFFER'}: "
                + ("ok" if p["passed"] else "FAILED"))


@command.command("quantize")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="The folder to write.")
@click.option("--target", type=click.Choice(["onnxruntime", "openvino", "tensorrt"]), default="onnxruntime", show_default=True,
              help="tensorrt: the weight-only ONNX graph TensorRT builds (checked here on ONNX Runtime); then `edgekit lm compile` on the GPU host.")
@click.option("--bits", type=click.Choice(["4", "8", "none"]), default="8", show_default=True,
              help="Weight bits; none: OpenVINO's FP32 stateful model (no compression).")
@click.option("--group-size", type=int, default=None,
              help="Weights per scale, along the input channels (INT4; ONNX Runtime INT8 too). Default: 32 on ONNX Runtime, 128 on OpenVINO, 64 on TensorRT (64 or 128).")
@click.option("--asymmetric", is_flag=True, help="A zero point per group (default: symmetric).")
@click.option("--lm-head", type=click.Choice(["quantize", "float"]), default="quantize", show_default=True)
@click.option("--data-aware", is_flag=True, help="OpenVINO INT4: AWQ and scale estimation on calibration text (NNCF). On SmolLM2-135M it gave a broken model "
                   "(perplexity 1.4e7), which the check refuses: not yet a way to a better INT4.")
@click.option("--method", type=click.Choice(["rtn", "hqq"]), default="rtn", show_default=True,
              help="ONNX Runtime INT4: round to nearest, or HQQ (half-quadratic quantization: zero points fitted per group, no data; "
                   "with --lm-head float it met the bar on SmolLM2-135M where RTN did not).")
@click.option("--kv-cache", type=click.Choice(["u8", "f16", "f32"]), default="u8", show_default=True,
              help="OpenVINO: the precision of the KV cache (u8 is its CPU plugin's own default and fastest); the check measures it.")
@click.option("--text", default="python-docs", show_default=True, help="Real text for calibration and the check: a UTF-8 file or python-docs.")
@click.option("--max-ppl-increase", type=float, default=0.10, show_default=True, help="The bar: relative perplexity increase over FP32 on held-out text.")
@click.option("--min-agreement", type=float, default=None, help="Also a bar on greedy agreement with FP32 (0-1).")
@click.option("--held-out", type=int, default=8, show_default=True, help="Held-out windows of text for the check.")
@click.option("--window", type=int, default=256, show_default=True, help="Tokens per window.")
@click.option("--threads", type=int, default=None)
@json_option
def quantize_cmd(source: str, output: str, target: str, bits: str, group_size: int | None, asymmetric: bool, lm_head: str, data_aware: bool,
                 method: str, kv_cache: str, text: str, max_ppl_increase: float, min_agreement: float | None, held_out: int, window: int, threads: int | None,
                 json_path: str | None) -> None:
    """Weight-only quantize the exported LM folder SOURCE and check it on held-out text: perplexity against FP32's
    (and greedy agreement); below the bar nothing is written and it exits 3."""
    from edgekit.llm.check import LMBar
    from edgekit.llm.weights import WeightOptions, compress_weights_lm

    options = WeightOptions(target=target, bits=None if bits == "none" else int(bits), group_size=group_size, symmetric=not asymmetric,
                            lm_head=lm_head, data_aware=data_aware, method=method, kv_cache=kv_cache, text=text, threads=threads, held_out=held_out, window=window,
                            bar=LMBar(max_ppl_increase=max_ppl_increase, min_agreement=min_agreement))
    run_and_emit(json_path, lambda: compress_weights_lm(source, output, options=options), _render_quantize)


def _render_quantize(r: dict[str, Any]) -> None:
    c = r["check"]
    kv = f", KV cache {r['kv_cache']}" if r.get("kv_cache") else ""
    out(f"{r['out']}: {r['weights']} for {r['target']} ({r.get('quantizer') or 'no weight compression'}{kv}), "
        f"{human_bytes(r['model_bytes'])} (FP32 {human_bytes(r['fp32_model_bytes'])}), {r['quantize_s']:.1f} s")
    out(f"check on {c['held_out_tokens']} held-out tokens: perplexity {c['perplexity']:.3f} vs FP32 {c['fp32_perplexity']:.3f} "
        f"({c['perplexity_increase']:+.1%}, bar {c['bar']['max_ppl_increase']:+.0%}), greedy agreement {c['greedy_agreement']:.2f}: "
        + ("ok" if c["meets_bar"] else "BELOW THE BAR"))
    if r.get("graph") == "model.onnx":
        out("note: made from the ONNX graph (this export folder has no openvino_model.xml): its attention runs in pieces, "
            "decoding ~1.85x slower; re-export with OpenVINO installed (edgekit lm export --openvino)")


@command.command("compile")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="The folder to write (model.engine, tokenizer, lm.json).")
@click.option("--target", type=click.Choice(["tensorrt"]), default="tensorrt", show_default=True)
@click.option("--max-context", type=int, default=2048, show_default=True, help="The longest sequence, prompt and output, the engine holds.")
@click.option("--max-prompt", type=int, default=None, help="The longest prompt (default: --max-context).")
@click.option("--precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
              help="The activations; fp16 by NVIDIA ModelOpt's AutoCast (edgekit[tensorrt-fp16]), the I/O and the cache stay fp32.")
@click.option("--workspace-mib", type=int, default=2048, show_default=True)
@click.option("--timing-cache", default="", help="A timing cache file (relative: in edgekit's cache folder).")
@json_option
def compile_cmd(source: str, output: str, target: str, max_context: int, max_prompt: int | None, precision: str, workspace_mib: int,
                timing_cache: str, json_path: str | None) -> None:
    """Build a TensorRT engine for the LM folder SOURCE (`edgekit lm quantize --target tensorrt`, or an export made with
    --onnx-graph trace) on this GPU host: prefill and decode profiles, the KV cache on the GPU."""
    from edgekit.llm.tensorrt import LMEngineOptions, compile_lm

    options = LMEngineOptions(max_context=max_context, max_prompt=max_prompt, precision=precision, workspace_mib=workspace_mib,
                              timing_cache=timing_cache)
    run_and_emit(json_path, lambda: compile_lm(source, output, options=options),
                 lambda r: out(f"{r['out']}: TensorRT {r['versions'].get('tensorrt', '?')} engine, {r['weights']} weights, {r['precision']} "
                               f"activations, up to {r['max_context']} tokens"))


@command.command("optimize")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="The folder to write: the winner's LM folder and optimize.json.")
@click.option("--target", type=click.Choice(["onnxruntime", "openvino"]), default="onnxruntime", show_default=True)
@click.option("--candidates", default=None, metavar="LIST",
              help="Comma-separated weight formats: int8, int4-g32, int4-g128-head-float, int4-g64-asym, fp32 (OpenVINO). "
                   "Default: ONNX Runtime int8-g32,int4-g32,int4-g64,int4-g128,int4-g32-head-float,int4-g32-hqq-head-float; OpenVINO fp32,int8,int4-g64,int4-g128,int4-g128-head-float.")
@click.option("--phases", type=int, default=4, show_default=True, help="Loadings of every candidate; each runs 2 generations of each in turns.")
@click.option("--prompt-tokens", type=int, default=128, show_default=True)
@click.option("--new-tokens", type=int, default=32, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--budget", "budgets", multiple=True, metavar="METRIC=MS", help="ttft=200ms, tpot_p99=50ms (repeatable): the winner must meet each.")
@click.option("--strict-undecided", is_flag=True, help="A budget the runs cannot decide rules the candidate out.")
@click.option("--kv-cache", type=click.Choice(["u8", "f16", "f32"]), default="u8", show_default=True, help="OpenVINO: the KV cache's precision.")
@click.option("--text", default="python-docs", show_default=True, help="Real text for calibration, the check and the prompt.")
@click.option("--max-ppl-increase", type=float, default=0.10, show_default=True)
@click.option("--min-agreement", type=float, default=None)
@click.option("--held-out", type=int, default=8, show_default=True)
@click.option("--window", type=int, default=256, show_default=True)
@json_option
def optimize_cmd(source: str, output: str, target: str, candidates: str | None, phases: int, prompt_tokens: int, new_tokens: int,
                 threads: int | None, budgets: tuple[str, ...], strict_undecided: bool, kv_cache: str, text: str, max_ppl_increase: float,
                 min_agreement: float | None, held_out: int, window: int, json_path: str | None) -> None:
    """Make every candidate weight format of the export SOURCE, check each on held-out text, measure the ones that
    meet the bar in turns on this machine, and write the fastest that meets the bar and every budget to OUTPUT
    (among candidates as fast within the noise, the lowest perplexity). Exit 3 when none does."""
    from edgekit.llm.bench import GenerationOptions, LMBudget
    from edgekit.llm.check import LMBar
    from edgekit.llm.optimize import LMOptimizeOptions, optimize_lm
    from edgekit.llm.weights import WeightOptions

    weights = WeightOptions(target=target, kv_cache=kv_cache, text=text, threads=threads, held_out=held_out, window=window,
                            bar=LMBar(max_ppl_increase=max_ppl_increase, min_agreement=min_agreement))
    gen = GenerationOptions(prompt_tokens=prompt_tokens, new_tokens=new_tokens, threads=threads, text=text, strict_undecided=strict_undecided,
                            budgets=tuple(LMBudget.parse(b) for b in budgets))
    options = LMOptimizeOptions(candidates=tuple(c for c in (candidates or "").split(",") if c.strip()), phases=phases, generation=gen)
    run_and_emit(json_path, lambda: optimize_lm(source, output, weights=weights, options=options), _render_optimize)


def _render_optimize(r: dict[str, Any]) -> None:
    cpu = r["cpu"]
    out(f"{r['target']}: {len(r['candidates'])} candidates, {r['prompt_tokens']}-token prompt, {r['new_tokens']} new tokens, "
        f"{r['phases']} phases; CPU {cpu['name']} ({', '.join(cpu['int8_features']) or 'no INT8 features'}), {r['wall_s']:.0f} s")
    rows = []
    for c in r["candidates"]:
        ck = c.get("check") or {}
        vs = c.get("vs_fastest")
        rows.append((("* " if c.get("winner") else "  ") + c["candidate"], f"{ck['perplexity_increase']:+.1%}" if ck else "-",
                     human_bytes(c["model_bytes"]) if c.get("model_bytes") else "-",
                     f"{c['tpot_ms']:.2f}" if "tpot_ms" in c else "-", f"{c['ttft_ms']:.1f}" if "ttft_ms" in c else "-",
                     "fastest" if c.get("fastest") else f"x{vs['ratio']:.3f} [{vs['ci_low']:.3f}, {vs['ci_high']:.3f}]" if vs else "-",
                     "winner" if c.get("winner") else (c.get("reason") or "")[:90]))
    out(table(["candidate", "perplexity", "size", "ms/token", "first ms", "vs fastest", "verdict"], rows))
    if r["winner"]:
        out(f"{r['out']}: {r['winner']}")


@command.command("bench")
@click.argument("model", type=click.Path(exists=True))
@click.option("--prompt-tokens", type=int, default=128, show_default=True)
@click.option("--new-tokens", type=int, default=32, show_default=True)
@click.option("--runs", type=int, default=5, show_default=True)
@click.option("--warmup", type=int, default=1, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--budget", "budgets", multiple=True, metavar="METRIC=MS", help="ttft=200ms, ttft_p90=..., tpot=30ms, tpot_p99=50ms (repeatable).")
@click.option("--strict-undecided", is_flag=True, help="A budget the runs cannot decide fails the run (exit 3).")
@click.option("--text", default="python-docs", show_default=True, help="Where the prompt's tokens come from.")
@click.option("--baseline", default=None, type=click.Path(exists=True),
              help="The baseline LM folder (or bundle): measured beside MODEL in turns; exit 3 when MODEL is slower per token or to the first token by more than --max-regression.")
@click.option("--max-regression", default="10%", show_default=True, help="Slowdown the baseline gate allows (on each ratio's confidence interval).")
@click.option("--max-duration", type=float, default=120.0, show_default=True, help="Seconds of measuring in turns before the baseline gate says undecided.")
@click.option("--device", default=None, metavar="NAME", help="Measure on this device over SSH: a [devices.NAME] of edgekit.toml (--config, else ./edgekit.toml) or ssh://user@host:port.")
@click.option("--config", default=None, type=click.Path(dir_okay=False), help="The project file that names --device (default ./edgekit.toml).")
@json_option
def bench_cmd(model: str, prompt_tokens: int, new_tokens: int, runs: int, warmup: int, threads: int | None, budgets: tuple[str, ...],
              strict_undecided: bool, text: str, baseline: str | None, max_regression: str, max_duration: float, device: str | None,
              config: str | None, json_path: str | None) -> None:
    """Time to first token, time per output token and tokens/s of greedy generation from MODEL (an LM folder,
    or a bundle `edgekit pack` made of one), against budgets (exit 3 when one fails), and with --baseline against
    another build measured beside it in turns (exit 3 when slower by more than --max-regression). With --device
    the device's own edgekit measures (over SSH, as `edgekit bench --device`)."""
    from edgekit.bench.project import parse_percent
    from edgekit.bundle import artifact_from_bundle
    from edgekit.llm.bench import GateOptions, GenerationOptions, LMBudget, bench_generation, compare_generation

    options = GenerationOptions(prompt_tokens=prompt_tokens, new_tokens=new_tokens, runs=runs, warmup=warmup, threads=threads,
                                budgets=tuple(LMBudget.parse(b) for b in budgets), strict_undecided=strict_undecided, text=text)
    gate = GateOptions(max_regression=parse_percent(max_regression, "--max-regression"), max_duration_s=max_duration,
                       strict_undecided=strict_undecided)
    # a bundle (edgekit pack of an LM folder): its verified, extracted LM folder, removed when the command ends
    ctx = click.get_current_context()
    announce = out if json_path != "-" else None
    folder = str(ctx.with_resource(artifact_from_bundle(model, lm=True, announce=announce)))
    base_folder = str(ctx.with_resource(artifact_from_bundle(baseline, lm=True, announce=announce))) if baseline is not None else None
    if device is not None:
        run_and_emit(json_path, lambda: _on_device(device, config, folder, base_folder, options, gate, model, baseline), _render_bench)
    elif base_folder is None:
        run_and_emit(json_path, lambda: bench_generation(folder, options=options, label=model), _render_bench)
    else:
        run_and_emit(json_path, lambda: compare_generation(folder, base_folder, options=options, gate=gate, label=model, baseline_label=baseline),
                     _render_bench)


def _on_device(device: str, config: str | None, folder: str, base_folder: str | None, options: Any, gate: Any, model: str,
               baseline: str | None) -> dict[str, Any]:
    from edgekit.devices import resolve_device
    from edgekit.devices.remote import lm_bench_on_device
    from edgekit.errors import GateFailed, UsageError
    from edgekit.llm.text import BUILTIN

    if options.text not in BUILTIN:
        raise UsageError(f"--text {options.text}: with --device the prompt comes from a built-in text", hint=f"use one of {', '.join(BUILTIN)}")
    args = ["--prompt-tokens", str(options.prompt_tokens), "--new-tokens", str(options.new_tokens), "--runs", str(options.runs),
            "--warmup", str(options.warmup), "--text", options.text]
    args += ["--threads", str(options.threads)] if options.threads else []
    for b in options.budgets:
        args += ["--budget", f"{b.metric}_{b.stat}={b.ms:g}ms"]
    args += ["--strict-undecided"] if options.strict_undecided else []
    if base_folder is not None:
        args += ["--max-regression", f"{100 * gate.max_regression:g}%", "--max-duration", f"{gate.max_duration_s:g}"]
    dev = resolve_device(device, config=config)
    r, code = lm_bench_on_device(dev, folder, args, baseline=base_folder, label=model, baseline_label=baseline)
    if code == 3:  # the device's edgekit said a gate failed: say which, here
        why = [f"{b['budget']} {b['verdict']} ({b['stat']} {b['value']:.1f} ms)" for b in r["budgets"]
               if b["verdict"] == "fail" or (options.strict_undecided and b["verdict"] == "undecided")]
        g = r.get("baseline")
        if g and g["verdict"] != "pass":
            why.append(f"baseline gate {g['verdict']} (per token x{g['tpot']['ratio']:.3f}, first token x{g['ttft']['ratio']:.3f})")
        raise GateFailed(f"on device {dev.name}: " + ("; ".join(why) or "a gate failed"), hint="see the report's budgets and baseline", result=r)
    return r


def _render_bench(r: dict[str, Any]) -> None:
    out(f"{r['model']}: {r['weights']} on {r['runtime']} ({r['precision']} activations, {r.get('kv_cache', 'f32')} KV cache), {r['prompt_tokens']}-token prompt, "
        f"{r['new_tokens']} new tokens x {r['runs']} runs; CPU {r['cpu']['name']} ({', '.join(r['cpu']['int8_features']) or 'no INT8 features'})")
    t, p = r["ttft_ms"], r["tpot_ms"]
    out(table(["", "p50 ms", "p90 ms", "p99 ms"], [("time to first token", t["p50"]["value"], t["p90"]["value"], t["p99"]["value"]),
                                                  ("time per output token", p["p50"]["value"], p["p90"]["value"], p["p99"]["value"])]))
    out(f"{r['tokens_per_s']:.1f} tokens/s end to end, {r['decode_tokens_per_s']:.1f} in decode; peak memory {human_bytes(r['peak_rss_bytes'])}, "
        f"model {human_bytes(r['model_bytes'])}")
    for b in r["budgets"]:
        out(f"budget {b['budget']}: {b['verdict']} ({b['stat']} {b['value']:.2f} ms, 95% interval [{b['ci_low']:.2f}, {b['ci_high']:.2f}])")
    for n in r.get("notes", []):
        out(f"note: {n}")
    g = r.get("baseline")
    if g:
        load = f", other work on {g['others_cores']:.1f} core(s)" if g.get("others_cores") is not None else ""
        out(f"baseline {g['model']} ({g['weights']}), {g['rounds']} rounds in turns{load}: {g['verdict']} "
            f"(per token x{g['tpot']['ratio']:.3f} [{g['tpot']['ci_low']:.3f}, {g['tpot']['ci_high']:.3f}], "
            f"first token x{g['ttft']['ratio']:.3f} [{g['ttft']['ci_low']:.3f}, {g['ttft']['ci_high']:.3f}]; allowed x{1 + g['max_regression']:.2f})")
        if g.get("reason"):
            out(f"note: {g['reason']}")
