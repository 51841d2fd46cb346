"""`edgekit keygen -o NAME`."""
from __future__ import annotations

import click

from edgekit.cli.common import json_option, out, run_and_emit


@click.command("keygen")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Write the private key to NAME (mode 0600) and the public key to NAME.pub.")
@json_option
def command(output: str, json_path: str | None) -> None:
    """Make an Ed25519 key pair for signing bundles (`pack --sign NAME`, `verify --key NAME.pub`).

    Keep the private key off the device (in your release job's secrets); ship only NAME.pub.
    It is never printed and never overwritten.
    """
    from edgekit.signing import generate_keypair

    run_and_emit(json_path, lambda: generate_keypair(output),
                 lambda r: out(f"key {r['key_id']}: private {r['private_key']} (0600, keep it secret), public {r['public_key']} (give it to devices)"))
