"""The candidate table of an optimize report: terminal rows and Markdown (e.g. a CI job summary)."""
from __future__ import annotations

from typing import Any

HEADERS = ["candidate", "accuracy drop", "top-1", "p50 ms [95% CI]", "{stat} ms", "vs winner", "budgets", "verdict"]


def headers(report: dict[str, Any]) -> list[str]:
    return [h.format(stat=report["stat"]) for h in HEADERS]


def rows(report: dict[str, Any]) -> list[list[str]]:
    out = []
    stat = report["stat"]
    for c in report["candidates"]:
        acc = c.get("accuracy") or {}
        lat = c.get("latency_ms")
        p50 = f"{lat['p50']['value']:.3f} [{lat['p50']['ci_low']:.3f}, {lat['p50']['ci_high']:.3f}]" if lat else "-"
        rank = f"{lat[stat] if stat != 'p50' else lat['p50']['value']:.3f}" if lat else "-"
        vs = c.get("vs_winner")
        vs_txt = f"x{vs['ratio']:.2f} [{vs['ci_low']:.2f}, {vs['ci_high']:.2f}]" if vs else ("1" if c["verdict"] == "WINNER" else "-")
        budgets = "; ".join(f"{b['budget']} {b['verdict'].upper()}" for b in c.get("budgets") or []) or "-"
        top1 = f"{100 * acc['top1']:.1f}%" if "top1" in acc else "-"
        drop = f"{acc['drop']:.3g} {'ok' if acc.get('meets') else 'OVER'}" if acc else "-"
        verdict = c["verdict"] if c["built"] else (c.get("error") or "not built")
        if c.get("stopped") and not c.get("latency_ms"):
            verdict += f" ({c['stopped']})"
        elif c.get("stopped") and c["verdict"] != "WINNER":
            verdict += f" (stopped after {c['measured_s']:.1f} s: {c['stopped'].split(':')[0]})"
        out.append([c["name"], drop, top1, p50, rank, vs_txt, budgets, verdict])
    return out


def summary_lines(report: dict[str, Any]) -> list[str]:
    acc = report["accuracy_budget"]
    env = report.get("environment") or {}
    lines = [f"accuracy: {acc['metric']} drop <= {acc['max_drop']:g} against FP32 on {acc['data']} ({acc['samples']} samples)",
             f"latency: {', '.join(report['budgets']) or 'no budget'}; fastest by {report['stat']}; feed {report['feed']}; "
             f"CPU {env.get('cpu', '?')} ({' '.join(env.get('cpu_features') or []) or 'no INT8/bf16 extensions'})"]
    if report.get("measured_on"):
        lines.append(report["measured_on"]["note"] + "".join(f"; {c}" for c in report["measured_on"]["cleaned"]))
    if report["winner"]:
        lines.append(f"winner: {report['winner']}: {report['why']}")
        lines.append(f"wrote {report['output']} (the artifact, manifest.json, optimize.json) in {report['seconds']:.1f} s")
    else:
        lines.append(f"no winner: {report['why']}")
    lines += ran_on_lines(report)
    return lines


def ran_on_lines(report: dict[str, Any]) -> list[str]:
    """With an executor other than local: which node compiled and raced the candidates, which ranked nodes for each quantize."""
    where = report.get("ran_on") or {}
    if where.get("executor") in (None, "local"):
        return []
    lines = [f"ran on {where['executor']}: compiles, accuracy and the race on node {(where.get('node_id') or '?')[:12]} ({where.get('host')})"
             + (f"; {where['retry']}" if where.get("retry") else "")]
    for c in report["candidates"]:
        placed = (c.get("quantize") or {}).get("ranked_on")
        if placed:
            lines.append(f"  {c['name']}: quantize ranked {placed['units']} nodes on " + ", ".join(f"{n[:12]} {k}" for n, k in placed["nodes"].items())
                         + "".join(f"; executor: {r}" for r in placed["retried"]))
    return lines


def markdown(report: dict[str, Any]) -> str:
    ok = report["winner"] is not None
    title = f"### edgekit optimize {report['model']} for {report['target']}: " + (f"✅ {report['winner']}" if ok else "❌ no candidate meets both budgets")
    hs = headers(report)
    lines = [title, "", "| " + " | ".join(hs) + " |", "|" + "---|" * len(hs)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows(report)]
    lines += [""] + [f"- {ln}" for ln in summary_lines(report)]
    return "\n".join(lines) + "\n"
