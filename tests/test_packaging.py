"""edgekit as users get it: `python -m build` makes a wheel and an sdist; the wheel, installed into a fresh
virtual environment, runs the README's Quickstart job and the GitHub Actions example in examples/ from folders
that are not this repository, finding its profiles and example manifests inside the installed package.

The fresh environment gets edgekit ONLY from the wheel. Its third-party dependencies (torch, OpenVINO, ...) are
reused from the environment running the tests through a .pth file (a folder of links to its site-packages, minus
any edgekit): installing them again took 47 s here, 178 s with the machine loaded. `EDGEKIT_TEST_FRESH_VENV=1`
does that instead (`pip install torch==2.13.0 'WHEEL[all]'` and foolbox).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import github_actions
from edgekit.cli import cli

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "github-actions" / "edgekit.yml"
# everything edgekit reads at run time: the top-level targets/ and calibration/, shipped as edgekit/_data/<folder>/
DATA_FOLDERS = ("targets", "calibration")
SOURCES = sorted(p.relative_to(ROOT).as_posix() for d in DATA_FOLDERS for p in (ROOT / d).glob("*.toml"))
PACKAGED = sorted(f"edgekit/_data/{s}" for s in SOURCES)  # where setup.py's package_dir puts them in the wheel


# --- the packaged data, from this checkout ----------------------------------------------------

def test_profiles_and_manifests_live_at_the_top_level() -> None:
    """The checkout reads the one copy in targets/ and calibration/, the same files the wheel ships."""
    from edgekit.config import PACKAGED_MANIFESTS, PACKAGED_TARGETS

    assert {"targets/cpu-openvino.toml", "calibration/imagenet-photos.toml"} <= set(SOURCES)
    assert PACKAGED_TARGETS == ROOT / "targets" and PACKAGED_MANIFESTS == ROOT / "calibration"


def test_no_profile_or_manifest_exists_in_two_places() -> None:
    """A profile or manifest has one home: targets/ or calibration/. A .toml of the same name anywhere under edgekit/
    (the old edgekit/targets/, edgekit/examples/calibration/, a hand copy) would ship or be read instead of it."""
    names = {Path(s).name for s in SOURCES}
    copies = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "edgekit").rglob("*.toml") if p.name in names)
    assert not copies, f"{copies}: these are kept in targets/ or calibration/ only (git rm the copies under edgekit/)"
    stray = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "edgekit").rglob("*.toml"))
    assert not stray, f"{stray}: profiles go in targets/, manifests in calibration/ (the build ships them from there)"


def test_edgekit_targets_in_this_checkout_calls_its_targets_built_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run inside edgekit's own checkout, ./targets IS the built-in folder: listed once, as built-in, not as the user's."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("EDGEKIT_TARGETS", raising=False)
    res = CliRunner().invoke(cli, ["targets", "--json", str(tmp_path / "t.json")])
    assert res.exit_code == 0, res.output
    listing = json.loads((tmp_path / "t.json").read_text())
    origins = [(t["name"], t["origin"]) for t in listing["targets"] if t["path"]]
    assert ("cpu-openvino", "built-in") in origins and not [o for o in origins if o[1] == "./targets"], origins
    assert len(origins) == len(set(origins)) and all(t["shadowed_by"] is None for t in listing["targets"])
    assert [d["origin"] for d in listing["search_path"]] == ["built-in"] and "edgekit's own checkout" in res.output


def test_user_profiles_come_before_the_built_in_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EDGEKIT_TARGETS, then ./targets, then the package's; `edgekit targets` says which one won and why."""
    from edgekit.config import PACKAGED_TARGETS, load_target

    env_dir, cwd = tmp_path / "team-profiles", tmp_path / "project"
    (cwd / "targets").mkdir(parents=True)
    env_dir.mkdir()
    (env_dir / "cpu-openvino.toml").write_text('backend = "openvino"\ndescription = "team"\n[budgets]\np99 = "20ms"\n')
    (cwd / "targets" / "cpu-openvino.toml").write_text('backend = "openvino"\ndescription = "project"\n')
    (cwd / "targets" / "edge-box.toml").write_text('backend = "onnxruntime"\ndescription = "project box"\n')
    (cwd / "targets" / "broken.toml").write_text('backend = "openvino"\nthreds = 2\n')
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("EDGEKIT_TARGETS", str(env_dir))
    assert load_target("cpu-openvino").source == str(env_dir / "cpu-openvino.toml")
    assert load_target("edge-box").source == str(Path("targets").absolute() / "edge-box.toml")
    assert load_target("jetson-orin-nano").source == str(PACKAGED_TARGETS / "jetson-orin-nano.toml")
    monkeypatch.delenv("EDGEKIT_TARGETS")
    assert load_target("cpu-openvino").description == "project"

    monkeypatch.setenv("EDGEKIT_TARGETS", str(env_dir))
    res = CliRunner().invoke(cli, ["targets", "--json", str(tmp_path / "t.json")])
    assert res.exit_code == 0, res.output
    rows = {(t["name"], t["origin"]): t for t in json.loads((tmp_path / "t.json").read_text())["targets"]}
    assert rows[("cpu-openvino", "EDGEKIT_TARGETS")]["shadowed_by"] is None
    assert rows[("cpu-openvino", "./targets")]["shadowed_by"] == str(env_dir / "cpu-openvino.toml")
    assert rows[("cpu-openvino", "built-in")]["shadowed_by"] == str(env_dir / "cpu-openvino.toml")
    assert rows[("openvino", "backend name")]["backend"] == "openvino"
    assert "unknown key 'threds'" in rows[("broken", "./targets")]["error"]  # listed with its error, not fatal
    assert re.search(r"cpu-openvino\s+openvino\s+CPU\s+fp32\s+EDGEKIT_TARGETS\s+team", res.output)
    assert "imagenet-photos" in res.output and "--calib NAME" in res.output


def test_built_in_calibration_manifests_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--calib imagenet-photos` and `edgekit:imagenet-photos` from any folder; a path the user has wins."""
    from edgekit.data.calibration import calibration_set
    from edgekit.config import PACKAGED_MANIFESTS
    from edgekit.errors import UsageError
    from edgekit.onnxmodel import TensorSpec

    monkeypatch.chdir(tmp_path)
    spec = [TensorSpec("inputs", (1, 3, 224, 224), np.dtype("float32"))]
    for source in ("imagenet-photos", "edgekit:imagenet-photos", "edgekit:imagenet-photos.toml"):
        cs = calibration_set(source, spec)
        assert cs.description.startswith(str(PACKAGED_MANIFESTS / "imagenet-photos.toml")) and cs.count == 16
        assert next(iter(cs.feeds(spec)))["inputs"].shape == (1, 3, 224, 224)
    (tmp_path / "imagenet-photos").mkdir()  # the user's own (empty) folder of that name: theirs, not ours
    with pytest.raises(UsageError, match="calibration folder imagenet-photos has no .npy, .npz or image files"):
        calibration_set("imagenet-photos", spec)
    with pytest.raises(UsageError, match="edgekit ships no calibration manifest 'imagenet-fotos'") as exc:
        calibration_set("edgekit:imagenet-fotos", spec)
    assert exc.value.exit_code == 2 and exc.value.hint == "did you mean 'edgekit:imagenet-photos'?"
    with pytest.raises(UsageError, match="no such file or folder") as exc:
        calibration_set("imagenet-fotos", spec)
    assert "built-in manifest (imagenet-photos, imagenet-val-foolbox)" in exc.value.hint


# --- the wheel in a fresh virtual environment ----------------------------------------------------

@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build` (isolated, as a release is built) on a copy of this checkout: an sdist, and a wheel built from it."""
    src = tmp_path_factory.mktemp("src") / "edgekit"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", "build", "dist"))
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


def test_build_makes_a_wheel_and_an_sdist_with_the_data(dist: Path) -> None:
    (wheel,), (sdist,) = dist.glob("*.whl"), dist.glob("*.tar.gz")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(PACKAGED) <= names and "edgekit/py.typed" in names
    tomls = [n for n in names if n.endswith(".toml")]  # one copy of each profile and manifest, nothing else
    assert sorted(tomls) == PACKAGED, tomls
    assert not any(n.startswith(("tests/", "bench/", "examples/")) for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {"openvino", "torch", "images", "all", "test"} <= set(re.findall(r"^Provides-Extra: (\S+)", metadata, re.M))
    assert "edgekit = edgekit.cli:main" in zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert set(SOURCES) <= members and {"pyproject.toml", "README.md"} <= members


def _shared_site_packages() -> list[Path]:
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return [Path(p) for p in sorted(paths)]


def _clean_env(venv: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with only `venv` activated: no PYTHONPATH, no other edgekit on PATH."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "EDGEKIT_TARGETS"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    ours = Path(sys.executable).parent
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *(p for p in env["PATH"].split(os.pathsep) if p and Path(p) != ours)])
    env.update(VIRTUAL_ENV=str(venv), EDGEKIT_PROGRESS="0", HF_HUB_OFFLINE="1", **extra)
    return env


@pytest.fixture(scope="module")
def wheel_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with edgekit installed from the wheel, and from nowhere else."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    (wheel,) = dist.glob("*.whl")
    py = venv / "bin" / "python"
    if os.environ.get("EDGEKIT_TEST_FRESH_VENV") == "1":
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        for args in (["torch==2.13.0", f"{wheel}[all]"], ["--no-deps", "foolbox==3.3.4"]):
            subprocess.run([str(py), "-m", "pip", "install", "-q", *args], check=True, timeout=1800, env=_clean_env(venv))
    else:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
        site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        # third-party packages of the test environment, minus any edgekit (an editable install, its finder, .pth files)
        third_party = venv / "third-party"
        third_party.mkdir()
        for shared in _shared_site_packages():
            for entry in shared.iterdir():
                if entry.name.lower().startswith(("edgekit", "__editable__", "_edgekit")) or entry.suffix == ".pth" \
                        or entry.name == "__pycache__" or (third_party / entry.name).exists():
                    continue
                (third_party / entry.name).symlink_to(entry)
        (site / "zz-third-party.pth").write_text(f"{third_party}\n")
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, timeout=300,
                       env=_clean_env(venv))
    return venv


def test_only_the_wheel_provides_edgekit(wheel_venv: Path, tmp_path: Path) -> None:
    code = "import edgekit, json, sys; print(json.dumps({'file': edgekit.__file__, 'path': sys.path}))"
    res = subprocess.run([str(wheel_venv / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env=_clean_env(wheel_venv), timeout=120)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert Path(info["file"]).resolve().is_relative_to(wheel_venv.resolve()), info["file"]
    assert not [p for p in info["path"] if p and Path(p).resolve().is_relative_to(ROOT)], info["path"]


def quickstart() -> tuple[list[str], list[str]]:
    """The README Quickstart's first command, split into its install part and the edgekit job."""
    section = (ROOT / "README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 2 and all(len(b.strip().splitlines()) == 1 for b in blocks), "the Quickstart is two one-line commands"
    parts = [p.strip() for p in blocks[0].split(" && ")]
    job = [p for p in parts if p.startswith("edgekit ")]
    setup = parts[: len(parts) - len(job)]
    assert parts[len(setup):] == job and [p.split()[1] for p in job] == ["export", "quantize", "compile", "bench"], parts
    assert all(p.startswith(("python3 -m venv", ". .venv/bin/activate", "pip install")) for p in setup), setup
    return setup, job


@pytest.fixture(scope="module")
def quickstart_job(wheel_venv: Path, dist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The Quickstart's edgekit commands, verbatim, run from a folder outside the repository."""
    setup, job = quickstart()
    (wheel,) = dist.glob("*.whl")
    extras = set(re.findall(r"^Provides-Extra: (\S+)", zipfile.ZipFile(wheel).read(
        next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))).decode(), re.M))
    for part in setup:  # the install part installs extras the wheel has
        for group in re.findall(r"\.\[([\w,]+)\]", part):
            assert set(group.split(",")) <= extras, (part, extras)
    work = tmp_path_factory.mktemp("quickstart-user")
    env = _clean_env(wheel_venv, EDGEKIT_CACHE=str(tmp_path_factory.mktemp("edgekit-cache")))
    seconds, bench_rc = {}, None
    for cmd in job:
        t0 = time.perf_counter()
        res = subprocess.run(["bash", "-eo", "pipefail", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        seconds[cmd.split()[1]] = round(time.perf_counter() - t0, 1)
        if cmd == job[-1] and res.returncode == 3:  # a latency budget failed: the test decides whether the machine is to blame
            bench_rc = 3
            continue
        assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return {"dir": work, "seconds": seconds, "env": env, "bench_rc": bench_rc}


@pytest.mark.slow
@pytest.mark.requires_openvino
def test_quickstart_job_runs_from_the_wheel(quickstart_job: dict, wheel_venv: Path, record_property: pytest.RecordProperty) -> None:
    """export -> quantize -> compile -> bench with a budget, outside the repository, on the packaged profile and manifests."""
    work, site = quickstart_job["dir"], wheel_venv.resolve()
    record_property("quickstart_seconds", quickstart_job["seconds"])
    compiled = json.loads((work / "out" / "openvino-int8" / "manifest.json").read_text())
    profile = Path(compiled["target"]["source"]).resolve()
    assert profile.is_relative_to(site) and profile.name == "cpu-openvino.toml", profile  # the wheel's profile, from /tmp
    quant = json.loads((work / "out" / "model.int8.onnx.json").read_text())
    manifest = Path(quant["calibration"]["source"].split(" (")[0]).resolve()
    assert manifest.is_relative_to(site) and manifest.name == "imagenet-photos.toml", manifest  # --calib imagenet-photos
    assert quant["calibration"]["samples_used"] == 16 and quant["accuracy"]  # --eval imagenet-val-foolbox ran
    bench = json.loads((work / "out" / "bench.json").read_text())
    budgets = {b["budget"]: b for b in bench["results"][0]["budgets"]}
    assert set(budgets) == {"p99<=50ms"} and budgets["p99<=50ms"]["source"] == "command line", budgets  # replaces the profile's p99
    if quickstart_job["bench_rc"] == 3:
        # exit 3 is edgekit doing its job when p99 is over budget because other work crowds the cores: then the
        # miss must be founded on what it measured (the interval above the budget, or the point estimate after
        # measuring to the cap) and the report must say how busy the machine was. On a quiet machine (the run's
        # own reading of the other work on its cores) a miss is a defect.
        result = bench["results"][0]
        missed = [b for b in budgets.values() if b["verdict"] != "pass"]
        said = [f"{b['budget']} ({b['stat']}={b['value']:.1f}ms)" for b in missed]
        assert not bench["passed"] and missed, budgets
        others = result["others_cores"]
        assert others is not None and others >= 0.5, f"the Quickstart missed {said} on a quiet machine (other work: {others} cores)"
        for b in missed:
            assert b["ci_low"] > b["limit_ms"] or "decided on the point estimate" in b["reason"], b
        return
    assert bench["passed"] and quickstart_job["bench_rc"] is None


def _cache_actions(store: Path, workspace: Path, log: list[str]) -> dict:
    """actions/cache/restore and /save backed by a folder; a pull request sees its own caches and its base branch's."""
    def visible(job: github_actions.Job) -> list[Path]:
        refs = {job.github["ref"], "refs/heads/" + job.github["base_ref"]} if job.github["base_ref"] else {job.github["ref"]}
        entries = [p for p in store.iterdir() if json.loads((p / "meta.json").read_text())["ref"] in refs] if store.exists() else []
        return sorted(entries, key=lambda p: -json.loads((p / "meta.json").read_text())["seq"])  # newest first

    def restore(job: github_actions.Job, w: dict[str, str]) -> dict[str, str]:
        entries = visible(job)
        names = [json.loads((p / "meta.json").read_text())["key"] for p in entries]
        hit = next((p for p, n in zip(entries, names) if n == w["key"]), None)
        for prefix in [k.strip() for k in w.get("restore-keys", "").splitlines() if k.strip()] if hit is None else []:
            hit = next((p for p, n in zip(entries, names) if n.startswith(prefix)), None)
            if hit:
                break
        matched = json.loads((hit / "meta.json").read_text())["key"] if hit else ""
        if hit:
            shutil.copytree(hit / "data", workspace / w["path"], dirs_exist_ok=True)
        log.append(f"restore {w['key']} -> {matched or 'miss'}")
        return {"cache-hit": str(matched == w["key"]).lower(), "cache-primary-key": w["key"], "cache-matched-key": matched}

    def save(job: github_actions.Job, w: dict[str, str]) -> dict[str, str]:
        assert w["key"], "actions/cache/save needs a key"
        seq = len(list(store.glob("*"))) if store.exists() else 0
        entry = store / f"{seq:03d}"
        shutil.copytree(workspace / w["path"], entry / "data")
        (entry / "meta.json").write_text(json.dumps({"key": w["key"], "ref": job.github["ref"], "seq": seq}))
        log.append(f"save {w['key']}")
        return {}

    return {"actions/cache/restore": restore, "actions/cache/save": save}


def _run_workflow(event: str, ref: str, sha: str, *, quickstart_job: dict, wheel_venv: Path, dist: Path, root: Path,
                  cache: Path, log: list[str]) -> tuple[github_actions.Job, list[github_actions.StepResult], Path]:
    """One run of the example's job on a fresh checkout of a user's repository (their model and manifest)."""
    workspace, temp, uploads = root / "work", root / "runner-temp", root / "uploads"
    for d in (workspace / "calibration", temp, uploads):
        d.mkdir(parents=True)
    shutil.copy(quickstart_job["dir"] / "out" / "model.onnx", workspace / "model.onnx")
    from edgekit.config import PACKAGED_MANIFESTS

    shutil.copy(PACKAGED_MANIFESTS / "imagenet-photos.toml", workspace / "calibration" / "images.toml")  # the user's manifest

    def checkout(job: github_actions.Job, w: dict[str, str]) -> dict[str, str]:
        return {}  # the workspace above is the checkout

    def setup_python(job: github_actions.Job, w: dict[str, str]) -> dict[str, str]:
        assert w.get("python-version"), "pin the Python version"
        return {"python-version": w["python-version"]}  # the wheel's virtual environment is first on PATH

    def upload(job: github_actions.Job, w: dict[str, str]) -> dict[str, str]:
        files = [f for pattern in w["path"].splitlines() if pattern.strip() for f in workspace.glob(pattern.strip())]
        for f in files:
            shutil.copy(f, uploads / f.name)
        log.append(f"upload {w['name']}: {sorted(f.name for f in files)}")
        return {}

    actions = {"actions/checkout": checkout, "actions/setup-python": setup_python, "actions/upload-artifact": upload,
               **_cache_actions(cache, workspace, log)}
    job = github_actions.load_job(WORKFLOW, event=event, ref=ref, sha=sha, workspace=workspace, temp=temp, env_overrides={
        # what a user edits: the shape of the Quickstart's model (dynamic batch), a budget this shared machine
        # meets under any load (it replaces the profile's p99), a short measurement
        "BUDGET": "p99=1000ms", "SHAPE": "inputs:1x3x224x224", "MIN_DURATION": "1"})
    # `pip install "edgekit[...]"` as written; pip's own settings point it at the wheel (edgekit is not on this
    # machine's registry), and every dependency is already there
    base = {**quickstart_job["env"], "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(dist)}
    results = job.run(workspace=workspace, temp=temp, actions=actions, base_env=base)
    return job, results, workspace


@pytest.mark.slow
@pytest.mark.requires_openvino
def test_github_actions_example_runs_as_written(quickstart_job: dict, wheel_venv: Path, dist: Path, tmp_path: Path) -> None:
    """examples/github-actions/edgekit.yml, its `run:` steps in order with GitHub's variables: a push to main
    (no baseline yet: budgets only; caches main's build), then a pull request (re-measures main's build paired)."""
    cache, log = tmp_path / "actions-cache", []
    runs = {}
    for event, ref, sha in (("push", "refs/heads/main", "a" * 40), ("pull_request", "refs/pull/7/merge", "b" * 40)):
        job, results, workspace = _run_workflow(event, ref, sha, quickstart_job=quickstart_job, wheel_venv=wheel_venv, dist=dist,
                                                root=tmp_path / event, cache=cache, log=log)
        outcome = {r.name: r.outcome for r in results}
        print(f"{event}: " + "; ".join(f"{r.name}: {r.outcome} {r.seconds:.1f} s" for r in results))
        assert all(o != "failure" for o in outcome.values()), "\n".join(f"--- {r.name}: {r.outcome}\n{r.output[-2500:]}" for r in results)
        runs[event] = (job, results, workspace, outcome)

    job, results, workspace, outcome = runs["push"]
    install = next(r for r in results if r.name == "Install edgekit")
    assert "Requirement already satisfied: edgekit" in install.output, install.output  # the wheel, and every dependency there
    assert outcome["Keep main's build as the baseline"] == outcome["Cache main's build"] == "success"
    bench_step = next(r for r in results if r.name.startswith("Bench"))
    assert "no build of main in the cache yet" in bench_step.output
    assert json.loads((workspace / "build/edgekit/bench.json").read_text())["results"][0]["baseline"] is None
    assert log[:2] == [f"restore edgekit-baseline-Linux-cpu-openvino-{'a' * 40} -> miss", f"save edgekit-baseline-Linux-cpu-openvino-{'a' * 40}"]

    job, results, workspace, outcome = runs["pull_request"]
    assert outcome["Keep main's build as the baseline"] == outcome["Cache main's build"] == "skipped"
    assert job.steps["baseline"]["outputs"]["cache-matched-key"] == f"edgekit-baseline-Linux-cpu-openvino-{'a' * 40}"
    result = json.loads((workspace / "build/edgekit/bench.json").read_text())["results"][0]
    assert result["baseline"]["mode"] == "paired" and not result["baseline"]["regressed"] and result["passed"]
    summary = "".join(job.summaries)
    assert "p99<=1000ms" in summary and "|" in summary  # the Markdown table in the job summary
    cases = ET.parse(workspace / "build/edgekit/junit.xml").getroot().iter("testcase")
    assert [c for c in cases] and not list(ET.parse(workspace / "build/edgekit/junit.xml").getroot().iter("failure"))
    assert re.search(r"upload edgekit-reports: \[.*'bench.json'.*'junit.xml'.*'quantize.json'", log[-1])
