"""`edgekit targets`: the target profiles `--target NAME` finds, and where each one came from."""
from __future__ import annotations

import click

from edgekit.cli.common import json_option, out, run_and_emit, table


@click.command("targets")
@json_option
def command(json_path: str | None) -> None:
    """List the targets: backend names, your profiles (EDGEKIT_TARGETS, then ./targets) and the built-in ones.

    The first profile of a name wins; a later one of the same name is listed as shadowed.
    Also lists the calibration manifests edgekit ships (use them as --calib NAME).
    """
    from edgekit.config import target_listing

    run_and_emit(json_path, target_listing, _render)


def _render(listing: dict) -> None:
    rows = []
    for t in listing["targets"]:
        if t["error"]:
            what = f"error: {t['error']}"
        else:
            what = t["description"] + (f" (shadowed by {t['shadowed_by']})" if t["shadowed_by"] else "")
        rows.append((t["name"], t["backend"] or "-", t["device"] or "-", t["precision"] or "-", t["origin"], what))
    out(table(["target", "backend", "device", "precision", "from", "description"], rows))
    out()
    out("profiles are looked up in: " + "; ".join(f"{d['origin']} {d['path']}" + ("" if d["exists"] else " (absent)") + (f" ({d['note']})" if d.get("note") else "") for d in listing["search_path"]))
    if listing["calibration_manifests"]:
        out("built-in calibration manifests (--calib NAME): "
            + "; ".join(f"{m['name']} ({m['description']})" for m in listing["calibration_manifests"]))
