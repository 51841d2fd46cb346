"""`edgekit inspect MODEL`."""
from __future__ import annotations

import click

from edgekit.cli.common import human_bytes, human_count, json_option, out, run_and_emit, table


@click.command("inspect")
@click.argument("model", type=click.Path())
@click.option("--nodes", is_flag=True, help="List every quantized and float compute node.")
@json_option
def command(model: str, nodes: bool, json_path: str | None) -> None:
    """Inputs/outputs, op histogram, parameters, MACs, size and, for QDQ models, quantized nodes."""
    from edgekit.inspection import inspect_model

    run_and_emit(json_path, lambda: inspect_model(model), lambda s: _render(s, nodes))


def _render(s, nodes: bool) -> None:  # noqa: ANN001
    out(f"{s.path}: {human_bytes(s.size_bytes)}, opset {s.opset}, {human_count(s.parameters)} parameters, "
        f"{human_count(s.macs)} MACs{' (' + s.macs_note + ')' if s.macs_note else ''}")
    rows = [("input", i["name"], "x".join(map(str, i["shape"])), i["dtype"]) for i in s.inputs]
    rows += [("output", o["name"], "x".join(map(str, o["shape"])), o["dtype"]) for o in s.outputs]
    out(table(["", "name", "shape", "dtype"], rows))
    out("ops: " + ", ".join(f"{k} {v}" for k, v in s.ops.items()))
    if s.quantized:
        out(f"quantized: {len(s.quantized_nodes)} nodes run in INT8, {len(s.float_compute_nodes)} compute nodes stay in float")
        if nodes:
            out("  int8:  " + ", ".join(s.quantized_nodes))
            out("  float: " + ", ".join(s.float_compute_nodes))
    else:
        out("quantized: no (FP model)")
