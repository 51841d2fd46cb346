"""`edgekit doctor [--device NAME]`: which backends work here (or on a device), and why not where they don't."""
from __future__ import annotations

import click

from edgekit.cli.common import human_bytes, json_option, out, run_and_emit, table


@click.command("doctor")
@click.option("--device", default=None, metavar="NAME", help="Ask a device over SSH instead: a [devices.NAME] of edgekit.toml or ssh://user@host:port.")
@click.option("--config", default=None, type=click.Path(dir_okay=False), help="The edgekit.toml that defines the device (default ./edgekit.toml).")
@json_option
def command(device: str | None, config: str | None, json_path: str | None) -> None:
    """Each backend: its version, the devices it sees, and why it is unavailable where it is.

    With --device, the same on the device, plus what is missing there and the line that installs it;
    exit 4 when the device cannot be reached or has no edgekit.
    """
    if device is None:
        from edgekit.doctor import diagnose

        run_and_emit(json_path, diagnose, _render)
        return
    from edgekit.doctor import diagnose_device
    from edgekit.errors import BackendUnavailable

    report = run_and_emit(json_path, lambda: diagnose_device(device, config=config), _render_device)
    if report["edgekit"] is None:
        raise BackendUnavailable(f"device {report['device']['name']}: edgekit is not installed for {report['python_executable']}",
                                 hint=f"install it there: {report['missing'][0]['fix']}")


def _render(report: dict) -> None:
    out(f"edgekit {report['edgekit']} on {report['machine']['cpu']} ({report['machine']['cores']} cores), Python {report['machine']['python']}")
    rows = [(b["name"], "yes" if b["available"] else "no", b["version"], "; ".join(b["devices"]) if b["available"] else b["reason"])
            for b in report["backends"]]
    out(table(["backend", "works", "version", "devices / why not"], rows))
    if report["extras"]:
        out("optional: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in report["extras"].items()))


def _render_device(r: dict) -> None:
    d = r["device"]
    if r["edgekit"] is None:
        out(f"device {d['name']} ({d['address']}): reachable, Python {r['python']} at {r['python_executable']}, no edgekit")
    else:
        rec = r["record"]
        out(f"device {d['name']} ({d['address']}): edgekit {r['edgekit']} on {r['machine']['cpu']} ({r['machine']['cores']} cores), "
            f"Python {r['python']}, {rec.get('model') or rec.get('machine')}" + (f", power mode {rec['jetson_power_mode']}" if rec.get("jetson_power_mode") else ""))
        rows = [(b["name"], "yes" if b["available"] else "no", b["version"], "; ".join(b["devices"]) if b["available"] else b["reason"]) for b in r["backends"]]
        out(table(["backend", "works", "version", "devices / why not"], rows))
        out(f"work folder {r['workdir']}: {human_bytes(r['free_bytes'])} free" + (f", {r['stale_runs']} run folder(s) there" if r["stale_runs"] else ""))
    for m in r["missing"]:
        out(f"missing: {m['what']}: {m['fix']}")
