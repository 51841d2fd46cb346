"""`edgekit export SOURCE -o OUT.onnx`."""
from __future__ import annotations

import click

from edgekit.cli.common import json_option, out, run_and_emit, table


@click.command("export")
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The ONNX file to write.")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]", help="An input and its example shape, e.g. image:1x3x224x224 (repeatable).")
@click.option("--dynamic-batch", is_flag=True, help="Make axis 0 of every input and output dynamic.")
@click.option("--dynamic-axis", "dynamic_axes", multiple=True, metavar="NAME:AXIS", help="Another dynamic axis, e.g. input_ids:1 (repeatable).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the exporter's).")
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "torchscript"]), default="auto", show_default=True,
              help="auto tries the dynamo exporter and falls back to the TorchScript one, saying so.")
@click.option("--atol", type=float, default=1e-4, show_default=True, help="Parity tolerance (max abs) against PyTorch; beyond it exits 3.")
@click.option("--trust-torchscript", is_flag=True, help="Allow a TorchScript file: it runs code from the file, so only for files you trust.")
@json_option
def command(source: str, output: str, inputs: tuple[str, ...], dynamic_batch: bool, dynamic_axes: tuple[str, ...],
            opset: int | None, exporter: str, atol: float, trust_torchscript: bool, json_path: str | None) -> None:
    """Export SOURCE to ONNX and check it against the source on the same inputs.

    SOURCE is `pkg.module:callable` (returning an nn.Module, or a module and example
    inputs), a TorchScript file (.pt: code you must trust, see --trust-torchscript), a
    torch.export archive (.pt2, loaded without unpickling code), or an .onnx file to
    validate and re-save.
    """
    from edgekit.export import ExportOptions, InputSpec, export_model

    options = ExportOptions(
        inputs=tuple(InputSpec.parse(i) for i in inputs), dynamic_batch=dynamic_batch, dynamic_axes=dynamic_axes,
        opset=opset, exporter=exporter, atol=atol, trust_torchscript=trust_torchscript,
    )
    run_and_emit(json_path, lambda: export_model(source, output, options=options), _render)


def _render(report) -> None:  # noqa: ANN001
    out(f"{report.output}: opset {report.opset}, exporter {report.exporter} (from {report.source_kind})")
    for note in report.notes:
        out(f"note: {note}")
    if report.parity:
        rows = [(p["output"], p["batch"], p["max_abs"], p["max_rel"], p["cosine"]) for p in report.parity]
        out(table(["output", "batch", "max abs", "max rel", "cosine"], rows))
    out("parity: " + ("ok" if report.passed else "FAILED"))
