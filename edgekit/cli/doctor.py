"""`edgekit doctor`: which backends work here, and why not where they don't."""
from __future__ import annotations

import click

from edgekit.cli._common import json_option, out, run_and_emit, table


@click.command("doctor")
@json_option
def command(json_path: str | None) -> None:
    """Each backend: its version, the devices it sees, and why it is unavailable where it is."""
    from edgekit.doctor import diagnose

    run_and_emit(json_path, diagnose, _render)


def _render(report: dict) -> None:
    out(f"edgekit {report['edgekit']} on {report['machine']['cpu']} ({report['machine']['cores']} cores), Python {report['machine']['python']}")
    rows = [(b["name"], "yes" if b["available"] else "no", b["version"], "; ".join(b["devices"]) if b["available"] else b["reason"])
            for b in report["backends"]]
    out(table(["backend", "works", "version", "devices / why not"], rows))
    if report["extras"]:
        out("optional: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in report["extras"].items()))
