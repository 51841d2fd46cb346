"""`edgekit compare A B --data SOURCE`."""
from __future__ import annotations

import click

from edgekit.cli.common import json_option, out, run_and_emit, table


@click.command("compare")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--data", required=True, help="Real inputs: a folder of .npy/.npz, a .npz, images with a calibration .toml, or pkg.module:callable.")
@click.option("--target-a", default=None, help="Backend/profile to run A with (default: its own, or onnxruntime for an .onnx).")
@click.option("--target-b", default=None, help="Backend/profile to run B with.")
@click.option("--min-cosine", type=float, default=0.99, show_default=True, help="Fail (exit 3) when any output's worst-row cosine is lower.")
@click.option("--atol", type=float, default=None, help="Also fail when any output's max abs error is larger.")
@click.option("--samples", type=int, default=None, help="Use at most N samples.")
@click.option("--per-node", is_flag=True, help="Two ONNX files: find the first tensor where they part ways.")
@click.option("--node-sqnr", type=float, default=20.0, show_default=True, help="With --per-node: SQNR (dB) under which a tensor has parted ways.")
@json_option
def command(a: str, b: str, data: str, target_a: str | None, target_b: str | None, min_cosine: float, atol: float | None,
            samples: int | None, per_node: bool, node_sqnr: float, json_path: str | None) -> None:
    """Run A and B (models or compiled artifacts, any backends) on the same real inputs and compare outputs."""
    from edgekit.compare import compare_models

    run_and_emit(json_path, lambda: compare_models(a, b, data=data, target_a=target_a, target_b=target_b, min_cosine=min_cosine,
                                                   atol=atol, samples=samples, per_node=per_node, node_sqnr_db=node_sqnr), _render)


def _render(r: dict) -> None:
    out(f"A: {r['a']['path']} ({r['a']['backend']}, {r['a']['precision']})   B: {r['b']['path']} ({r['b']['backend']}, {r['b']['precision']})")
    out(table(["output", "max abs", "max rel", "cosine", "worst cos", "SQNR dB", "top-1 agree"],
              [(o["output"], o["max_abs"], o["max_rel"], o["cosine"], o["cosine_min_row"], o["sqnr_db"], o["top1_agreement"]) for o in r["outputs"]]))
    if r.get("per_node"):
        p = r["per_node"]
        first = p["first"]
        out(f"per node: {p['tensors']} shared tensors; " + (f"first under {p['threshold_db']:g} dB: {first['tensor']} (node {first['node']}, {first['sqnr_db']:.1f} dB)"
                                                             if first else f"none under {p['threshold_db']:g} dB"))
        for w in p["worst"][:5]:
            out(f"  {w['sqnr_db']:7.1f} dB  {w['tensor']}  ({w['node']})")
    out("verdict: " + ("ok" if r["passed"] else "FAIL: " + "; ".join(r["failures"])))
