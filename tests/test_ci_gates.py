"""`edgekit bench --config` as a CI maintainer meets it: baselines that know their model, the baseline
lifecycle (new entry, --update-baselines, PRs), budget precedence, and reports on every exit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from junitparser import JUnitXml

from edgekit.cli import cli
from edgekit.compile import compile_model
from zoo import copies

FAST = ["--min-duration", "0.3", "--max-duration", "1", "--warmup", "20"]


@pytest.fixture(scope="module")
def effnet(efficientnet_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EfficientNet-Lite0 compiled for ONNX Runtime, as a CI job's build step leaves it."""
    out = tmp_path_factory.mktemp("ci") / "effnet-ort"
    compile_model(efficientnet_onnx, out, target="onnxruntime", precision="fp32", shapes={"inputs": (1, 3, 224, 224)})
    return out


def _suite(xml: Path):  # noqa: ANN202 - junitparser's TestSuite
    suites = list(JUnitXml.fromfile(str(xml)))
    assert len(suites) == 1
    return suites[0]


def test_baseline_of_another_model_is_an_error_naming_both(effnet: Path, efficientnet_onnx: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "effnet.json"
    assert CliRunner().invoke(cli, ["bench", str(effnet), "--save-baseline", str(base), *FAST]).exit_code == 0
    assert json.loads(base.read_text())["identity"]["graph"]
    copies(efficientnet_onnx, 2, tmp_path / "two-nets.onnx")  # another network: a mixed-up CI cache key
    proj = tmp_path / "edgekit.toml"
    proj.write_text(f'[[bench]]\nname = "detector"\nmodel = "two-nets.onnx"\ntarget = "onnxruntime"\nbaseline = "{base.name}"\n')
    xml, md = tmp_path / "bench.xml", tmp_path / "summary.md"
    res = CliRunner().invoke(cli, ["bench", "--config", str(proj), "--junit", str(xml), "--markdown", str(md), *FAST])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "[[bench]] detector" in err and "another model" in err
    assert "two-nets.onnx" in err and "efficientnet.onnx" in err and "--allow-model-change" in err
    suite = _suite(xml)  # nothing was measured (checked before measuring); the error is the one failed testcase
    assert suite.tests == 1 and suite.failures == 1 and "another model" in list(suite)[0].result[0].message
    # the same network at another input size is another measurement too
    res = CliRunner().invoke(cli, ["bench", str(efficientnet_onnx), "--shape", "inputs:1x3x192x192", "--baseline", str(base), *FAST])
    assert res.exit_code == 2 and "inputs=1x3x224x224" in res.stderr and "inputs=1x3x192x192" in res.stderr, res.stderr
    # a deliberate architecture change: reported as a new baseline, no comparison with the old model
    js = tmp_path / "run.json"
    res = CliRunner().invoke(cli, ["bench", "--config", str(proj), "--allow-model-change", "--json", str(js), *FAST])
    assert res.exit_code == 0, res.output
    r = json.loads(js.read_text())["results"][0]
    assert r["baseline"] is None and r["baseline_status"] == "new: the model changed"
    assert "new: the model changed" in res.output and any("efficientnet.onnx" in n for n in r["notes"])


def test_new_entry_passes_then_update_baselines_records_it(effnet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lifecycle: a PR adds an entry (no baseline yet: passes on its budgets), main records it
    (--update-baselines, into [defaults] baseline_dir), and the next PR is compared with it, paired with
    the copy of main's artifact kept beside the baseline. Every run appends to one job summary."""
    monkeypatch.chdir(tmp_path)
    proj = tmp_path / "edgekit.toml"
    proj.write_text(f'[defaults]\nbaseline_dir = "baselines"\n\n[[bench]]\nname = "effnet"\nmodel = "{effnet}"\n'
                    'target = "onnxruntime"\nbudgets = { p99 = "2000ms" }\n')
    summary = tmp_path / "step_summary.md"
    summary.write_text("## unit tests\n\nall passed\n")  # an earlier step of the same job
    xml, js = tmp_path / "bench.xml", tmp_path / "run.json"
    common = ["bench", "--config", str(proj), "--junit", str(xml), "--markdown", str(summary), "--json", str(js), *FAST]
    res = CliRunner().invoke(cli, common)
    assert res.exit_code == 0, res.output
    r = json.loads(js.read_text())["results"][0]
    assert r["baseline"] is None and r["baseline_status"] == "new: no baseline yet" and "new: no baseline yet" in res.output
    assert not (tmp_path / "baselines").exists()
    cases = list(_suite(xml))
    assert {c.name for c in cases} == {"p99<=2000ms", "baseline"} and not any(c.result for c in cases)
    assert sum(float(c.time) for c in cases) <= r["wall_s"] + 0.01  # each testcase its share, not the entry's whole time

    res = CliRunner().invoke(cli, [*common, "--update-baselines"])
    assert res.exit_code == 0, res.output
    recorded = json.loads((tmp_path / "baselines" / "effnet.json").read_text())
    assert recorded["identity"]["inputs"] == {"inputs": [1, 3, 224, 224]} and recorded["identity"]["precision"] == "fp32"
    assert (tmp_path / "baselines" / "effnet.artifact" / "manifest.json").exists()

    res = CliRunner().invoke(cli, common)
    assert res.exit_code == 0, res.output
    r = json.loads(js.read_text())["results"][0]
    assert r["baseline"]["mode"] == "paired" and r["baseline_status"] is None
    assert any("baselines/effnet.artifact" in n for n in r["notes"])
    assert not any(str(tmp_path) in n for n in r["notes"])  # no runner paths in notes
    text = summary.read_text()
    assert text.startswith("## unit tests\n\nall passed\n") and text.count("### edgekit bench: ✅ pass (edgekit.toml") == 3


def test_budget_precedence_one_gate_per_statistic_with_its_source(effnet: Path, tmp_path: Path) -> None:
    profile = tmp_path / "camera.toml"  # the target profile: p99 33 ms (30 FPS), p50 1 s
    profile.write_text('backend = "onnxruntime"\n[budgets]\np99 = "33ms"\np50 = "1s"\n')
    proj = tmp_path / "edgekit.toml"
    proj.write_text(f'[[bench]]\nname = "effnet"\nmodel = "{effnet}"\ntarget = "camera.toml"\nbudgets = {{ p99 = "20ms", p90 = "1000ms" }}\n')
    xml, js = tmp_path / "bench.xml", tmp_path / "run.json"
    res = CliRunner().invoke(cli, ["bench", "--config", str(proj), "--budget", "p99=50ms", "--junit", str(xml), "--json", str(js), *FAST])
    assert res.exit_code in (0, 3), res.output
    budgets = {b["stat"]: (b["limit_ms"], b["source"]) for b in json.loads(js.read_text())["results"][0]["budgets"]}
    assert budgets == {"p99": (50.0, "command line"), "p50": (1000.0, "target profile camera"), "p90": (1000.0, "edgekit.toml entry effnet")}
    names = [c.name for c in _suite(xml)]
    assert sorted(names) == sorted(["p99<=50ms", "p50<=1000ms", "p90<=1000ms"])
    assert "p99<=50ms" in res.output and "(command line)" in res.output and "33ms" not in res.output and "20ms" not in res.output


def test_budget_errors_name_the_unit_the_entry_and_one_list_of_statistics(effnet: Path, tmp_path: Path) -> None:
    proj = tmp_path / "edgekit.toml"
    proj.write_text(f'[[bench]]\nname = "effnet"\nmodel = "{effnet}"\ntarget = "onnxruntime"\nbudgets = {{ p99 = 33 }}\n')
    res = CliRunner().invoke(cli, ["bench", "--config", str(proj)])
    assert res.exit_code == 2 and "[[bench]] effnet" in res.stderr and "no unit" in res.stderr and '"33ms"' in res.stderr
    proj.write_text(proj.read_text().replace("p99 = 33", 'p99 = "33"'))
    res = CliRunner().invoke(cli, ["bench", "--config", str(proj)])
    assert res.exit_code == 2 and "no unit" in res.stderr and "p99=33ms" in res.stderr
    res = CliRunner().invoke(cli, ["bench", str(effnet), "--budget", "p99=33"])
    assert res.exit_code == 2 and "no unit" in res.stderr
    from edgekit.config import STATS

    stats = ", ".join(STATS)
    for bad in ("p98=33ms", "fast"):
        res = CliRunner().invoke(cli, ["bench", str(effnet), "--budget", bad])
        assert res.exit_code == 2 and stats in res.stderr, res.stderr


def test_config_error_still_writes_junit_and_markdown(effnet: Path, tmp_path: Path) -> None:
    proj = tmp_path / "edgekit.toml"
    proj.write_text(f'[[bench]]\nname = "good"\nmodel = "{effnet}"\ntarget = "onnxruntime"\n\n'
                    f'[[bench]]\nname = "typo"\nmodel = "{effnet}"\ntarget = "cpu-openvno"\n')
    xml, md = tmp_path / "bench.xml", tmp_path / "summary.md"
    res = CliRunner().invoke(cli, ["bench", "--config", str(proj), "--junit", str(xml), "--markdown", str(md), *FAST])
    assert res.exit_code == 2 and "[[bench]] typo" in res.stderr and "cpu-openvino" in res.stderr  # did you mean
    suite = _suite(xml)
    assert suite.tests == 1 and suite.failures == 1  # checked before measuring: `good` was not measured either
    case = list(suite)[0]
    assert case.classname == "typo" and "unknown target 'cpu-openvno'" in case.result[0].message
    text = md.read_text()
    assert "❌ error" in text and "unknown target 'cpu-openvno'" in text
    # a missing artifact and --save-baseline with a project file: exit 2 before any measuring, also reported
    proj.write_text('[[bench]]\nname = "gone"\nmodel = "out/missing"\ntarget = "onnxruntime"\n')
    res = CliRunner().invoke(cli, ["bench", "--config", str(proj), "--markdown", str(md), "--save-baseline", "b.json"])
    assert res.exit_code == 2 and "--update-baselines" in res.stderr and md.read_text().count("❌ error") == 2
    res = CliRunner().invoke(cli, ["bench", "--config", str(proj), "--junit", str(xml)])
    assert res.exit_code == 2 and "[[bench]] gone" in res.stderr and "no such file" in res.stderr and _suite(xml).failures == 1


def test_architecture_digest_ignores_names_and_weights_not_layers(efficientnet_onnx: Path, tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from edgekit.bench.identity import graph_digest
    from edgekit.bench.report import format_p

    m = onnx.load(str(efficientnet_onnx))
    same = graph_digest(onnx.load(str(copies(efficientnet_onnx, 1, tmp_path / "renamed.onnx"))))  # every name prefixed
    w = m.graph.initializer[0]
    retrained = onnx.load(str(efficientnet_onnx))
    retrained.graph.initializer[0].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.float32(1.5), w.name))
    two = graph_digest(onnx.load(str(copies(efficientnet_onnx, 2, tmp_path / "two.onnx"))))
    assert graph_digest(m) == same == graph_digest(retrained) != two
    assert format_p(3.8e-260) == "p < 1e-4" and format_p(0.0031) == "p=0.0031"


def test_single_artifact_baseline_options_are_refused_with_a_project_file(tmp_path: Path) -> None:
    """--baseline and --max-regression were silently ignored with --config (the entries' own settings ran)."""
    proj = tmp_path / "edgekit.toml"
    proj.write_text('[[bench]]\nname = "e"\nmodel = "m.onnx"\ntarget = "onnxruntime"\n')
    res = CliRunner().invoke(cli, ["bench", "--config", str(proj), "--baseline", str(tmp_path / "b.json")])
    assert res.exit_code == 2 and "each entry has its own" in res.stderr, res.output
    res = CliRunner().invoke(cli, ["bench", "--config", str(proj), "--max-regression", "5%"])
    assert res.exit_code == 2 and "max_regression" in res.stderr, res.output
