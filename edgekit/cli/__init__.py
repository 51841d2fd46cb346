"""The `edgekit` command: a Click group (`cli`, `main`) whose commands load lazily, one module each (`COMMANDS`);
`common` holds what every command shares (--json, tables, number formatting).

Exit codes (DESIGN.md): 0 ok, 1 bug (traceback), 2 bad usage/input, 3 gate failed,
4 backend or device unavailable. An edgekit error prints one `error: ...` line on
stderr; `-v` adds the traceback.
"""
from __future__ import annotations

import importlib
import logging
import sys
import traceback
from typing import Any

import click

from edgekit.errors import EdgekitError
from edgekit.version import VERSION

COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("edgekit.cli.export", "Export a PyTorch model (or check an ONNX file) to ONNX, with a parity check."),
    "inspect": ("edgekit.cli.inspect", "Inputs, outputs, ops, parameters, MACs and quantized nodes of an ONNX model."),
    "quantize": ("edgekit.cli.quantize", "INT8 post-training quantization to QDQ ONNX with real calibration data."),
    "compare": ("edgekit.cli.compare", "Compare two models or artifacts on the same real inputs (exit 3 beyond tolerances)."),
    "compile": ("edgekit.cli.compile", "Build a target's artifact (OpenVINO IR, TensorRT engine, optimised ONNX)."),
    "optimize": ("edgekit.cli.optimize", "The fastest artifact for a target that meets the accuracy and latency budgets, chosen by measuring."),
    "bench": ("edgekit.cli.bench", "Latency statistics against budgets and a baseline (exit 3 when a gate fails)."),
    "lm": ("edgekit.cli.lm", "Generative decoders: export with the KV cache, weight-only INT8/INT4, bench in tokens per second."),
    "doctor": ("edgekit.cli.doctor", "Which backends work on this machine, and why not where they don't."),
    "targets": ("edgekit.cli.targets", "The target profiles --target finds (yours first, then the built-in ones) and where each came from."),
    "pack": ("edgekit.cli.pack", "Bundle compiled artifacts, their source ONNX and manifest for a device."),
    "verify": ("edgekit.cli.verify", "Check a bundle's hashes and its compatibility with this machine."),
    "keygen": ("edgekit.cli.keygen", "Make an Ed25519 key pair to sign bundles and check them on the device."),
}
# not listed in --help: run by edgekit itself on a device (optimize --device's latency race)
INTERNAL: dict[str, str] = {"optimize-race": "edgekit.cli.optimize_race"}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if _has_module(COMMANDS[name][0])]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in INTERNAL:
            return importlib.import_module(INTERNAL[cmd_name]).command
        if cmd_name not in COMMANDS or not _has_module(COMMANDS[cmd_name][0]):
            return None
        return importlib.import_module(COMMANDS[cmd_name][0]).command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            verbose = (ctx.obj or {}).get("verbose", 0)
            if verbose:
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="edgekit")
@click.option("-v", "--verbose", count=True, help="Show details and tracebacks (-vv: debug logs).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """edgekit: export, quantize, compile and benchmark networks for edge devices."""
    ctx.obj = {"verbose": verbose}
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("edgekit").setLevel(level)


def main() -> None:
    cli(prog_name="edgekit")
