"""`edgekit verify BUNDLE [--target T]`."""
from __future__ import annotations

import click

from edgekit.cli._common import json_option, out, run_and_emit, table


@click.command("verify")
@click.argument("bundle", type=click.Path())
@click.option("-t", "--target", default=None, help="Check against this target (backend, profile or .toml).")
@json_option
def command(bundle: str, target: str | None, json_path: str | None) -> None:
    """Check every hash, the manifest's schema, compatibility with this machine, and the
    preprocessing libraries; say which artifact `edgekit.load` would choose.

    A truncated or half-copied bundle exits 2 ("copy it again"); a changed byte, a version
    mismatch or a Pillow that resizes differently exits 3 and says what to do; a backend
    or library missing here exits 4.
    """
    from edgekit.bundle import check_verified, verify_bundle

    def work() -> dict:
        report = verify_bundle(bundle, target=target)
        report = {k: v for k, v in report.items() if k != "manifest"}
        _render(report)
        check_verified(report)
        return report

    run_and_emit(json_path, work, lambda r: None)


def _render(r: dict) -> None:
    out(f"{r['bundle']}: {r['files']} files, hashes ok")
    out(table(["artifact", "backend", "precision", "runs here", "why not"],
              [(a["dir"], a["backend"], a["precision"], "yes" if a["compatible"] else "no", a["reason"]) for a in r["artifacts"]]))
    pre = r.get("preprocessing") or {}
    if pre.get("needed"):
        versions = ", ".join(f"{k} {v}" for k, v in (pre.get("here") or {}).items())
        out(f"preprocessing: {'ok' if pre['ok'] else 'NOT ok'} ({versions})" + (f": {pre['reason']}" if pre.get("reason") else ""))
    if r.get("chosen"):
        out(f"edgekit.load chooses: {r['chosen']['why']}")
