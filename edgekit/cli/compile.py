"""`edgekit compile MODEL --target T -o DIR [--precision ...]`."""
from __future__ import annotations

import click

from edgekit.cli.common import json_option, out, run_and_emit


@click.command("compile")
@click.argument("model", type=click.Path())
@click.option("-t", "--target", required=True, help="A backend name (onnxruntime, openvino, tensorrt), a profile name (`edgekit targets` lists them), or a .toml path.")
@click.option("-o", "--output", required=True, type=click.Path(), help="The artifact folder to write (replaced whole).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default=None,
              help="Default: the target's, or int8 for a quantized (QDQ) model.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:SHAPE", help="Fix a dynamic input's shape, e.g. input_ids:1x128 (repeatable).")
@click.option("--strict", is_flag=True, help="Exit 3 when this machine's CPU lacks features the model's INT8 recipe assumed.")
@json_option
def command(model: str, target: str, output: str, precision: str | None, shapes: tuple[str, ...], json_path: str | None, strict: bool = False) -> None:
    """Build the target's artifact from an ONNX model at an explicit precision.

    OpenVINO: IR (.xml/.bin) with the inference precision set, never left to the
    runtime. ONNX Runtime: the graph-optimised ONNX. TensorRT: a serialized engine
    (explicit INT8 from QDQ; needs TensorRT and an NVIDIA GPU).
    """
    from edgekit.compile import compile_model
    from edgekit.data.feeds import parse_shape_option

    shape_map = dict(parse_shape_option(s) for s in shapes)
    manifest = run_and_emit(json_path, lambda: compile_model(model, output, target=target, precision=precision, shapes=shape_map), lambda m: _render(m, output))
    if strict and isinstance(manifest, dict) and manifest.get("cpu_features_missing"):
        from edgekit.errors import GateFailed

        raise GateFailed(f"--strict: this machine lacks {', '.join(manifest['cpu_features_missing'])}, which the INT8 recipe assumed",
                         hint="compile and bench on the device's kind of CPU, or quantize for this one (--target with its cpu_features)")


def _render(m: dict, output: str) -> None:
    settings = ", ".join(f"{k}={v}" for k, v in m.get("settings", {}).items() if not isinstance(v, (dict, list)))
    out(f"{output}: {m['backend']} on {m['device']}, precision {m['precision']} ({settings})")
    out("files: " + ", ".join(m["files"]))
    for n in m.get("notes", []):
        out(f"note: {n}")
