"""`edgekit optimize-race SPEC --artifact DIR ... --json OUT` (hidden): the device side of `optimize --device`.

The device agent runs it in its run folder on the artifacts it was sent; `edgekit.optimize.device`
writes the spec and reads the JSON back. Not for users: `edgekit optimize --device NAME` is.
"""
from __future__ import annotations

import click

from edgekit.cli.common import emit_json, json_option


@click.command("optimize-race", hidden=True)
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option("--artifact", "artifacts", multiple=True, required=True, help="A compiled artifact folder per candidate, in the spec's order.")
@json_option
def command(spec: str, artifacts: tuple[str, ...], json_path: str | None) -> None:
    """Race the spec's candidates here, interleaved, and write every sample with its round as JSON."""
    from edgekit.optimize.device import race_here

    emit_json(json_path, race_here(spec, artifacts))
