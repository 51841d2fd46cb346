"""`edgekit verify BUNDLE [--target T] [--key KEY.pub]`."""
from __future__ import annotations

import click

from edgekit.cli.common import json_option, out, run_and_emit, table


@click.command("verify")
@click.argument("bundle", type=click.Path())
@click.option("-t", "--target", default=None, help="Check against this target (backend, profile or .toml).")
@click.option("--key", "keys", multiple=True, type=click.Path(exists=True),
              help="A trusted public key (NAME.pub) or a folder of them (repeatable; also EDGEKIT_TRUSTED_KEYS). Then only a bundle signed by one of them passes.")
@click.option("--min-release", type=click.IntRange(min=0), default=None, help="Refuse a bundle whose release number is older (rollback protection).")
@json_option
def command(bundle: str, target: str | None, keys: tuple[str, ...], min_release: int | None, json_path: str | None) -> None:
    """Check every hash, the manifest's schema, compatibility with this machine, and the
    preprocessing libraries; say which artifact `edgekit.load` would choose.

    A truncated or half-copied bundle exits 2 ("copy it again"); a changed byte, a version
    mismatch or a Pillow that resizes differently exits 3 and says what to do; a backend
    or library missing here exits 4.
    """
    from edgekit.bundle import check_verified, verify_bundle

    def work() -> dict:
        report = verify_bundle(bundle, target=target, trusted_keys=keys, min_release=min_release)
        report = {k: v for k, v in report.items() if k != "manifest"}
        _render(report)
        check_verified(report)
        return report

    run_and_emit(json_path, work, lambda r: None)


def _render(r: dict) -> None:
    out(f"{r['bundle']}: {r['files']} files, hashes ok" + (f", release {r['release']}" if r.get("release") is not None else ""))
    sig = r.get("signature") or {}
    if sig.get("trusted"):
        out(f"signature ok: signed by trusted key {sig['key_id']} ({sig['key']}) at {sig['signed_at']}")
    elif sig.get("signed"):
        out(f"signed by key {sig['key_id']} at {sig.get('signed_at')}, NOT checked: no trusted key given (--key or EDGEKIT_TRUSTED_KEYS)")
    else:
        out("unsigned: anyone who can write to the bundle can change it; sign it with `edgekit pack --sign KEY`, check it with --key")
    out(table(["artifact", "backend", "precision", "runs here", "why not"],
              [(a["dir"], a["backend"], a["precision"], "yes" if a["compatible"] else "no", a["reason"]) for a in r["artifacts"]]))
    pre = r.get("preprocessing") or {}
    if pre.get("needed"):
        versions = ", ".join(f"{k} {v}" for k, v in (pre.get("here") or {}).items())
        out(f"preprocessing: {'ok' if pre['ok'] else 'NOT ok'} ({versions})" + (f": {pre['reason']}" if pre.get("reason") else ""))
    if r.get("chosen"):
        out(f"edgekit.load chooses: {r['chosen']['why']}")
