"""`edgekit pack ARTIFACT... -o BUNDLE`."""
from __future__ import annotations

import click

from edgekit.cli.common import json_option, out, run_and_emit


@click.command("pack")
@click.argument("artifacts", nargs=-1, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="The bundle: a .tar file, or a folder.")
@click.option("--bench", "bench_report", default=None, type=click.Path(dir_okay=False), help="An `edgekit bench --json` report to ship with it.")
@click.option("--labels", default=None, type=click.Path(dir_okay=False), help="Class labels, one per line in output order (for engine.top_k).")
@click.option("--source/--no-source", "include_source", default=True, show_default=True,
              help="Ship the ONNX the artifacts came from (lets the device rebuild a TensorRT engine; about doubles the size).")
@click.option("--sign", "sign_key", default=None, type=click.Path(dir_okay=False), help="Sign the bundle with this private key (from `edgekit keygen`).")
@click.option("--release", type=click.IntRange(min=0), default=None, help="A release number devices can require with `verify --min-release` (rollback protection).")
@json_option
def command(artifacts: tuple[str, ...], output: str, bench_report: str | None, labels: str | None, include_source: bool,
            sign_key: str | None, release: int | None, json_path: str | None) -> None:
    """Bundle compiled artifacts with the ONNX they came from, the preprocessing (and the versions of
    the libraries it uses), labels, I/O specs, budgets, accuracy and latency results, and a manifest
    of SHA-256 hashes and tool versions. The device checks it with `edgekit verify` and runs it with
    `edgekit.load`."""
    from edgekit.pack import pack_bundle

    run_and_emit(json_path, lambda: pack_bundle(list(artifacts), output, bench_report=bench_report, labels=labels, include_source=include_source,
                                                sign_key=sign_key, release=release),
                 lambda m: out(f"{output}: {len(m['artifacts'])} artifact(s), {len(m['files'])} files, "
                               + ", ".join(f"{a['backend']} {a['precision']}" for a in m["artifacts"])
                               + (f"; release {m['release']}" if m.get("release") is not None else "")
                               + ("; signed" if sign_key else "")))
