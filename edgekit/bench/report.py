"""Bench reports: terminal table, JUnit XML, Markdown (CI job summaries), PNG plot."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekit.errors import UsageError
from edgekit.files import atomic_path


def format_p(p: float) -> str:
    """`p=0.0031`, or `p < 1e-4` below that: a bootstrap or rank test cannot resolve 3.8e-260 from 1e-5."""
    return "p < 1e-4" if p < 1e-4 else f"p={p:.2g}"


def baseline_summary(r: dict[str, Any]) -> str | None:
    """`baseline (paired) floor x1.012 [0.98, 1.04] (p=0.41) ok`, `baseline new: no baseline yet`, or None."""
    b = r.get("baseline")
    if b:
        return f"baseline ({b.get('mode', 'recorded')}) {b['stat']} x{b['ratio']:.3f}{_ci(b)} ({format_p(b['p_value'])}) {gate_word(b)}"
    if r.get("baseline_status"):
        return f"baseline {r['baseline_status']}"
    return None


def gate_failed(b: dict[str, Any]) -> bool:
    """Whether the baseline gate fails the run: a regression, or an undecided gate under --strict-undecided
    (reports older than the undecided verdict carry only `regressed`)."""
    return bool(b.get("failed", b["regressed"]))


def gate_word(b: dict[str, Any]) -> str:
    verdict = b.get("verdict", "regressed" if b["regressed"] else "pass")
    if verdict == "undecided":
        return "UNDECIDED (fails: --strict-undecided)" if gate_failed(b) else "undecided"
    return "FAIL" if gate_failed(b) else "ok"


def rows(results: Sequence[dict[str, Any]]) -> list[list[Any]]:
    out = []
    for r in results:
        lat = r["latency_ms"]
        verdicts = "; ".join([f"{b['budget']} {b['verdict'].upper()}" + (f" ({b['source']})" if b.get("source") else "") for b in r["budgets"]]
                             + [x for x in [baseline_summary(r)] if x]) or "-"
        out.append([r["name"], r["target"], r["precision"], f"{lat['p50']['value']:.3f}", f"{lat['p90']['value']:.3f}",
                    f"{lat['p99']['value']:.3f}", f"{lat['mean']:.3f}", lat["iterations"], verdicts])
    return out


def _ci(b: dict[str, Any]) -> str:
    return f" [{b['ci_low']:.3f}, {b['ci_high']:.3f}]" if "ci_low" in b else ""


HEADERS = ["model", "target", "precision", "p50 ms", "p90 ms", "p99 ms", "mean ms", "runs", "gates"]


def markdown(results: Sequence[dict[str, Any]], *, title: str = "", error: str | None = None) -> str:
    """One run's section: a heading (verdict and `title`), the table, the notes, and the error that
    stopped the run, if one did."""
    ok = all(r["passed"] for r in results) and error is None
    verdict = "✅ pass" if ok else "❌ error" if error is not None else "❌ FAIL"
    lines = [f"### edgekit bench: {verdict}" + (f" ({title})" if title else "")]
    if results:
        lines += ["", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows(results)]
    for r in results:
        for n in r.get("notes", []):
            lines.append(f"\n- {r['name']}: {n}")
    if error is not None:
        lines.append(f"\n**error**: {error}")
    return "\n".join(lines) + "\n"


def junit(results: Sequence[dict[str, Any]], path: str | Path, *, error: str | None = None, error_entry: str | None = None) -> None:
    """One testcase per model x target x budget (and one per baseline gate), with the figures; an error
    that stopped the run is one more, failed, testcase (of its project entry when it names one), so a
    CI test tab shows it. Each testcase's time is its share of its entry's wall time."""
    root = ET.Element("testsuites", name="edgekit")
    suite = ET.SubElement(root, "testsuite", name="edgekit.bench")
    count = failures = 0
    for r in results:
        cls = f"{r['name']}.{r['target']}"
        lat = r["latency_ms"]
        figures = ", ".join(f"{k}={lat[k]['value']:.4f}ms" for k in ("p50", "p90", "p95", "p99")) + f", mean={lat['mean']:.4f}ms, runs={lat['iterations']}"
        gates = [(b["budget"], not b.get("failed", b["verdict"] != "pass"), f"{b['stat']}={b['value']:.4f}ms, CI [{b['ci_low']:.4f}, {b['ci_high']:.4f}], limit {b['limit_ms']:g}ms: {b['reason']}")
                 for b in r["budgets"]]
        if r.get("baseline"):
            b = r["baseline"]
            gates.append(("baseline", not gate_failed(b), f"{b.get('mode', 'recorded')}: {gate_word(b)}, {b['stat']} ratio {b['ratio']:.4f}{_ci(b)} (median ratio {b['median_ratio']:.4f}), {b['test']} {format_p(b['p_value'])}, max regression {100 * b['max_regression']:g}%"))
        elif r.get("baseline_status"):
            gates.append(("baseline", True, r["baseline_status"]))
        if not gates:
            gates.append(("measure", True, "no gate"))
        sources = {b["budget"]: b.get("source") for b in r["budgets"]}
        share = r.get("wall_s", r["duration_s"]) / len(gates)
        for name, ok, detail in gates:
            count += 1
            case = ET.SubElement(suite, "testcase", classname=cls, name=name, time=f"{share:.3f}")
            props = ET.SubElement(case, "properties")
            for k in ("p50", "p90", "p95", "p99"):
                ET.SubElement(props, "property", name=f"{k}_ms", value=f"{lat[k]['value']:.6f}")
            ET.SubElement(props, "property", name="mean_ms", value=f"{lat['mean']:.6f}")
            ET.SubElement(props, "property", name="precision", value=str(r["precision"]))
            if sources.get(name):
                ET.SubElement(props, "property", name="source", value=str(sources[name]))
            if not ok:
                failures += 1
                ET.SubElement(case, "failure", message=f"{name} failed: {detail}").text = figures
            ET.SubElement(case, "system-out").text = f"{figures}; {detail}"
    if error is not None:
        count += 1
        failures += 1
        case = ET.SubElement(suite, "testcase", classname=error_entry or "edgekit.bench", name="error", time="0")
        ET.SubElement(case, "failure", message=error, type="error").text = error
    for el in (suite, root):
        el.set("tests", str(count))
        el.set("failures", str(failures))
    with atomic_path(path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)


def plot(results: Sequence[dict[str, Any]], path: str | Path) -> None:
    from edgekit import deps

    plt = deps.pyplot()
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        s = np.asarray(r["samples_ms"])
        label = f"{r['name']} ({r['target']})"
        ax1.hist(s, bins=60, alpha=0.6, label=label)
        xs = np.sort(s)
        ax2.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=label)
        for b in r["budgets"]:
            ax2.axvline(b["limit_ms"], linestyle="--", color="red", linewidth=1)
    ax1.set_xlabel("latency (ms)")
    ax1.set_ylabel("runs")
    ax1.set_title("latency histogram")
    ax2.set_xlabel("latency (ms)")
    ax2.set_ylabel("fraction of runs")
    ax2.set_title("CDF (dashed: budgets)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def write_markdown(results: Sequence[dict[str, Any]], path: str | Path, *, title: str = "", error: str | None = None) -> None:
    """Append this run's section to `path` ($GITHUB_STEP_SUMMARY is shared by every step of a job):
    the old text and the new one go in together, through a temporary file renamed into place."""
    p = Path(path)
    try:
        old = p.read_bytes() if p.is_file() else b""
    except OSError as exc:
        raise UsageError(f"cannot read {p} to add to it: {exc.strerror}", hint="give a readable, writable --markdown file") from exc
    sep = b"" if not old or old.endswith(b"\n\n") else b"\n" if old.endswith(b"\n") else b"\n\n"
    with atomic_path(path) as tmp:
        tmp.write_bytes(old + sep + markdown(results, title=title, error=error).encode("utf-8"))
