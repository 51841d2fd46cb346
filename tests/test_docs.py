"""The documentation site: it builds with `mkdocs build --strict`, and the commands it shows run.

A *command block* is a fenced ```bash block in README.md or docs/**/*.md. Every one runs here, in the order of the
README and then of the site's nav, each with `bash -e` in one scratch folder shared by all of them (a page may use what
an earlier one made, e.g. Getting started's out/model.onnx), with this checkout's edgekit first on PATH, and must exit
0, unless the line right before its fence says why it cannot run here:

    <!-- not-run: needs a device reachable over SSH -->

Commands hidden in sh/shell/console blocks are refused, so nothing escapes the rule. The CI reaches this file through
the README's test command (`.ci/run` runs it verbatim), so the site's strict build is checked in CI here.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- not-run: (?P<reason>.*\S) -->$")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]*)")
SHELL_LANGS = {"sh", "shell", "console", "shell-session", "zsh"}


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    not_run: str | None  # the reason, when marked

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file, with the not-run marker on the line before it."""
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        end = i + 1
        while end < len(lines) and not (lines[end].strip().startswith(fence) and lines[end].strip().strip(fence[0]) == ""):
            end += 1
        body = "\n".join(line[indent:] for line in lines[i + 1:end])
        marked = MARKER.match(lines[i - 1].strip()) if i > 0 else None
        out.append(Block(path, i + 1, m["lang"].lower(), body, marked["reason"] if marked else None))
        i = end + 1
    return out


def _ignore_tags(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> None:
    return None


class _ConfigLoader(yaml.SafeLoader):
    """mkdocs.yml with its `!relative` and `!ENV` tags read as nothing: only the nav matters here."""


_ConfigLoader.add_multi_constructor("!", _ignore_tags)


def nav_pages() -> list[str]:
    """The site's pages in nav order, as paths relative to docs/."""
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader)

    def walk(item: object) -> list[str]:
        if isinstance(item, str):
            return [item]
        if isinstance(item, list):
            return [p for x in item for p in walk(x)]
        if isinstance(item, dict):
            return [p for x in item.values() for p in walk(x)]
        return []

    return walk(config["nav"])


def documents() -> list[Path]:
    """README.md, then the site's pages in nav order."""
    return [README, *(DOCS / p for p in nav_pages())]


def command_blocks() -> list[Block]:
    return [b for doc in documents() for b in blocks(doc) if b.lang == "bash"]


def _env(tmp: Path) -> dict[str, str]:
    """This checkout's edgekit first (PATH and PYTHONPATH), caches and the job summary in the scratch area."""
    shim = tmp / "bin"
    shim.mkdir()
    (shim / "edgekit").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m edgekit "$@"\n')
    (shim / "edgekit").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in {"EDGEKIT_TARGETS", "EDGEKIT_TRUSTED_KEYS", "PYTHONHOME"}}
    env.update(
        PATH=os.pathsep.join([str(shim), str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join([str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]),
        EDGEKIT_PROGRESS="0", HF_HUB_OFFLINE="1", NO_MKDOCS_2_WARNING="1",
        EDGEKIT_CACHE=str(tmp / "cache"), EDGEKIT_CACHE_DIR=str(tmp / "cache" / "openvino"),
        GITHUB_STEP_SUMMARY=str(tmp / "step-summary.md"),
    )
    return env


def test_the_site_builds_strict(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link or anchor, a missing snippet or a page left out of the nav fails."""
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
                         cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"mkdocs build --strict failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    # the CLI reference is generated from the commands: every command `edgekit --help` lists is in it, with its options
    from edgekit.cli import COMMANDS

    reference = (site / "reference" / "cli" / "index.html").read_text()
    for name in COMMANDS:
        assert f'id="edgekit-{name}"' in reference, f"the CLI reference has no section for `edgekit {name}`"
        page = site / "commands" / name / "index.html"
        assert page.exists(), f"no page for `edgekit {name}` (docs/commands/{name}.md in the nav)"
        assert f"edgekit {name} [OPTIONS]" in page.read_text(), f"docs/commands/{name}.md does not show its generated reference"
    # included, not copied: the benchmark tables come from bench/README.md
    first = next(line for line in (ROOT / "bench" / "README.md").read_text().splitlines() if line.startswith("| "))
    assert first.split("|")[1].strip().strip("`") in (site / "benchmarks" / "index.html").read_text()


def test_every_page_is_in_the_nav() -> None:
    pages = set(nav_pages())
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert on_disk == pages, f"in docs/ but not in the nav: {sorted(on_disk - pages)}; in the nav but missing: {sorted(pages - on_disk)}"


def test_every_command_block_is_run_or_says_why_not() -> None:
    """Commands live in ```bash blocks only, and a block that is not run says why on the line before it."""
    found = [b for doc in documents() for b in blocks(doc)]
    hidden = [b.where() for b in found if b.lang in SHELL_LANGS]
    assert not hidden, f"commands in a {sorted(SHELL_LANGS)} block escape tests/test_docs.py: use ```bash: {hidden}"
    starts = {(b.path, b.line) for b in found}
    for doc in documents():
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            if line.startswith("<!-- not-run"):
                assert MARKER.match(line), f"{doc.relative_to(ROOT)}:{n}: write it as <!-- not-run: REASON -->"
                assert (doc, n + 1) in starts, f"{doc.relative_to(ROOT)}:{n}: a not-run marker must be the line right before a fence"
    run = [b for b in found if b.lang == "bash" and b.not_run is None]
    assert run, "no command block runs"


@pytest.mark.slow
def test_command_blocks_run(tmp_path: Path, record_property: pytest.RecordProperty) -> None:
    """Each unmarked ```bash block, in README-then-nav order, in one scratch folder: exit 0."""
    env = _env(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    to_run = [b for b in command_blocks() if b.not_run is None]
    failures, seconds = [], {}
    for b in to_run:
        t0 = time.perf_counter()
        res = subprocess.run(["bash", "-eo", "pipefail", "-c", b.text], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        seconds[b.where()] = round(time.perf_counter() - t0, 1)
        if res.returncode != 0:
            failures.append(f"{b.where()} exited {res.returncode}:\n{b.text}\n--- stdout\n{res.stdout[-2000:]}\n--- stderr\n{res.stderr[-2000:]}")
    record_property("docs_block_seconds", seconds)
    assert not failures, "\n\n".join(failures)
    assert len(seconds) == len(to_run)


def test_the_readme_is_the_quickstart_and_links() -> None:
    """Under 150 lines, opening with the Quickstart; its test command is the one CI runs; its links resolve."""
    text = README.read_text()
    assert len(text.splitlines()) < 150
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings and headings[0] == "Quickstart", headings
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quickstart, re.S)
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci, "the README's test command must be a line of .ci/run, verbatim"
    # Getting started repeats the first command, and runs its edgekit steps one block each, word for word
    started = [b.text.strip() for b in blocks(DOCS / "getting-started.md") if b.lang == "bash"]
    assert commands[0] in started, "docs/getting-started.md shows the README's first Quickstart command verbatim"
    steps = [p.strip() for p in commands[0].split(" && ") if p.strip().startswith("edgekit ")]
    assert steps and all(s in started for s in steps), "each edgekit step of the Quickstart is a command block of docs/getting-started.md"
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not re.match(r"[a-z]+://", target):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
