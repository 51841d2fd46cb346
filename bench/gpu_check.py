"""The first run on an NVIDIA GPU with TensorRT: every TensorRT path edgekit has, in order, one JSON summary.

    bash bench/gpu_check.sh [--dry-run] [--out DIR] [--model FP32.onnx] [--samples N]

Steps: versions; the `requires_tensorrt` tests; fp32 against ONNX Runtime within 1e-4; `nvidia-desktop` twice
(the timing cache is saved, then loaded) and once more on a corrupted cache (a note, a new cache, the engine
built); quantize --target tensorrt -> compile int8 -> `edgekit compare` against ONNX Runtime on the same QDQ;
a version-compatible build and its load; a batch outside the optimisation profile (exit 2 naming the range,
never stale outputs); fp16 accuracy; bench with a budget.

`--dry-run` (no GPU; run in CI) runs every part that needs no GPU for real (export, quantize, the QDQ rule
check, the profiles the steps use, collecting the GPU tests) and runs each GPU command to its first TensorRT
call, which must end in exit 4 with a one-line message: the command lines themselves are checked here.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "calibration" / "imagenet-photos.toml"
IMAGENET_VAL = ROOT / "calibration" / "imagenet-val-foolbox.toml"


class Check:
    def __init__(self, out: Path, dry_run: bool) -> None:
        self.out, self.dry_run = out, dry_run
        self.steps: list[dict[str, Any]] = []

    def cli(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """One `edgekit` command: in its own process on the GPU run (as users run it), in this process on a dry run
        (the same click command, without a new interpreter's start-up for each of a dozen commands)."""
        if not self.dry_run:
            res = subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, cwd=self.out,
                                 env={**os.environ, "EDGEKIT_PROGRESS": "0", **(env or {})}, timeout=900)
            return res.returncode, res.stdout, res.stderr
        from click.testing import CliRunner

        from edgekit.cli import cli

        saved = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        here = os.getcwd()
        try:
            os.chdir(self.out)
            res = CliRunner().invoke(cli, list(args))
        finally:
            os.chdir(here)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception
        return res.exit_code, res.stdout, res.stderr

    def step(self, name: str, fn: Callable[[], dict[str, Any]], *, gpu: bool = True) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            detail = fn()
            ok = bool(detail.pop("ok", True))
        except Exception as exc:  # noqa: BLE001 - one failed step must not hide the others
            detail, ok = {"error": f"{type(exc).__name__}: {exc}"[:2000]}, False
        row = {"step": name, "gpu": gpu, "ok": ok, "seconds": round(time.perf_counter() - start, 2), **detail}
        self.steps.append(row)
        self.write()  # after every step: a run stopped by the 8-minute limit still leaves its summary
        print(f"{'ok  ' if ok else 'FAIL'} {name} ({row['seconds']} s)" + ("" if ok else f": {json.dumps(detail)[:400]}"), flush=True)
        return row

    def write(self, **extra: Any) -> Path:
        summary = {"dry_run": self.dry_run, "out": str(self.out), "ok": all(s["ok"] for s in self.steps), "steps": self.steps, **extra}
        path = self.out / "gpu_check.json"
        path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        return path

    def gpu_cli(self, *args: str, env: dict[str, str] | None = None, expect: int = 0, reads: str = "") -> dict[str, Any]:
        """A command that needs the GPU. On a dry run it must stop with exit 4 and one line naming TensorRT; one
        that `reads` an engine folder an earlier step would have built must stop at exactly that missing folder
        (exit 2), which shows the rest of its command line parsed."""
        rc, out, err = self.cli(*args, env=env)
        if self.dry_run:
            lines = err.strip().splitlines()
            if reads:
                ok = rc == 2 and len(lines) == 1 and f"{reads}: no such file" in lines[0]
            else:
                ok = rc == 4 and len(lines) == 1 and "tensorrt" in lines[0].lower()
            return {"ok": ok, "rc": rc, "command": ["edgekit", *args], "message": err.strip()[-300:]}
        return {"ok": rc == expect, "rc": rc, "command": ["edgekit", *args], "stdout": out[-1500:], "stderr": err[-1500:]}


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    out = Path(args.out or tempfile.mkdtemp(prefix="edgekit-gpu-check-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    c = Check(out, args.dry_run)
    cache = out / "cache"
    env = {"EDGEKIT_CACHE": str(cache)}
    fp32 = Path(args.model).resolve() if args.model else out / "fp32.onnx"
    int8 = out / "int8.onnx"

    # -- no GPU needed: versions, models, profiles -------------------------------------------------------------
    def versions() -> dict[str, Any]:
        rc, stdout, _ = c.cli("doctor", "--json", "-")
        from edgekit.backends.tensorrt_compat import cuda_major_of_tensorrt
        from edgekit.backends.tensorrt_cuda import device_info

        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True) if _has("nvidia-smi") else None
        return {"ok": rc in (0, 4), "doctor": _loads(stdout), "device": device_info(), "tensorrt_cuda_major": cuda_major_of_tensorrt(),
                "python": sys.version.split()[0], "nvidia_smi": smi.stdout.strip() if smi else None}

    c.step("versions", versions, gpu=False)
    if not args.model:
        c.step("export EfficientNet-Lite0 (dynamic batch)", lambda: _rc(c.cli(
            "export", "edgekit.examples.efficientnet:model", "-o", str(fp32), "--dynamic-batch")), gpu=False)
    if args.int8:
        int8 = Path(args.int8).resolve()
    c.step("quantize --target tensorrt", lambda: _quantize(c, fp32, int8, args.samples, reuse=bool(args.int8)), gpu=False)
    name = _input_name(fp32)
    shape = "1x3x224x224"
    (out / "vc.toml").write_text('backend = "tensorrt"\nprecision = "fp32"\n[options]\nversion_compatible = true\n'
                                 f'profiles.{name} = [[1,3,224,224],[1,3,224,224],[1,3,224,224]]\n')
    (out / "dyn.toml").write_text('backend = "tensorrt"\nprecision = "fp32"\n[options]\n'
                                  f'profiles.{name} = [[1,3,224,224],[2,3,224,224],[4,3,224,224]]\n')
    if not args.skip_collect:  # (the test suite that runs the dry run collects them itself)
        c.step("GPU tests collected", lambda: _collect(args.dry_run), gpu=False)

    # -- the GPU steps ----------------------------------------------------------------------------------------
    c.step("requires_tensorrt tests", lambda: _pytest(args.dry_run))
    shape_arg = ("--shape", f"{name}:{shape}")
    c.step("fp32 engine", lambda: c.gpu_cli("compile", str(fp32), "--target", "tensorrt", "--precision", "fp32", "-o", "e_fp32", *shape_arg, env=env))
    c.step("fp32 vs ONNX Runtime within 1e-4", lambda: c.gpu_cli(
        "compare", str(fp32), "e_fp32", "--data", str(IMAGENET_VAL), "--atol", "1e-4", "--min-cosine", "0.9999", "--json", "cmp_fp32.json",
        env=env, reads="e_fp32"))
    for i, label in enumerate(("nvidia-desktop: timing cache saved", "nvidia-desktop: timing cache loaded")):
        c.step(label, lambda i=i: _desktop(c, fp32, shape_arg, env, f"e_desk{i}", want="new" if i == 0 else "loaded"))
    c.step("nvidia-desktop: corrupted timing cache", lambda: _corrupt_then_build(c, fp32, shape_arg, env, cache))
    c.step("int8 engine", lambda: c.gpu_cli("compile", str(int8), "--target", "tensorrt", "-o", "e_int8", *shape_arg, env=env))
    c.step("int8: TensorRT vs ONNX Runtime on the same QDQ", lambda: c.gpu_cli(
        "compare", str(int8), "e_int8", "--data", str(IMAGENET_VAL), "--min-cosine", "0.99", "--json", "cmp_int8.json", env=env, reads="e_int8"))
    c.step("version-compatible build", lambda: c.gpu_cli("compile", str(fp32), "--target", str(out / "vc.toml"), "-o", "e_vc", env=env))
    c.step("version-compatible load", lambda: c.gpu_cli("bench", "e_vc", "--min-duration", "1", "--json", "bench_vc.json", env=env, reads="e_vc"))
    c.step("dynamic-batch engine (profile 1..4)", lambda: c.gpu_cli("compile", str(fp32), "--target", str(out / "dyn.toml"), "-o", "e_dyn", env=env))
    c.step("batch 8 outside the profile: exit 2", lambda: _outside_profile(c, args.dry_run))
    c.step("fp16 accuracy (AutoCast)", lambda: c.gpu_cli(
        "compare", str(fp32), "e_desk0", "--data", str(IMAGENET_VAL), "--min-cosine", "0.99", "--json", "cmp_fp16.json", env=env, reads="e_desk0"))
    c.step("bench with a budget", lambda: c.gpu_cli(
        "bench", "e_int8", "--budget", "p99=50ms", "--min-duration", "3", "--json", "bench_int8.json", env=env, reads="e_int8"))
    results = {k: _json(out / f"{k}.json") for k in ("cmp_fp32", "cmp_int8", "cmp_fp16", "bench_int8") if (out / f"{k}.json").exists()}
    path = c.write(results=results)
    summary = json.loads(path.read_text())
    if not args.dry_run:  # the GPU run's summary is a result to keep beside the others (engines stay in --out)
        (ROOT / "bench" / "results").mkdir(exist_ok=True)
        (ROOT / "bench" / "results" / "gpu_check.json").write_text(path.read_text())
    print(f"{'all steps ok' if summary['ok'] else 'SOME STEPS FAILED'}; summary: {path}")
    return summary


def _has(tool: str) -> bool:
    from shutil import which

    return which(tool) is not None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip()[-500:]


def _rc(res: tuple[int, str, str]) -> dict[str, Any]:
    return {"ok": res[0] == 0, "rc": res[0], "stderr": res[2][-800:]}


def _input_name(model: Path) -> str:
    import onnx

    return onnx.load(str(model), load_external_data=False).graph.input[0].name


def _quantize(c: Check, fp32: Path, int8: Path, samples: int, *, reuse: bool) -> dict[str, Any]:
    """`edgekit quantize --target tensorrt`, or a model it wrote earlier (--int8), checked against TensorRT's rules."""
    import onnx

    from edgekit.backends.tensorrt_check import check_explicit_quantization

    rc, err = 0, ""
    if not reuse:
        rc, _, err = c.cli("quantize", str(fp32), "-o", str(int8), "--calib", str(PHOTOS), "--target", "tensorrt",
                           "--samples", str(samples), "--json", "quantize.json")
    problems = check_explicit_quantization(onnx.load(str(int8))) if rc == 0 else ["not written"]
    return {"ok": rc == 0 and not problems, "rc": rc, "qdq_problems": problems[:5], "stderr": err[-500:]}


def _collect(dry_run: bool) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-m", "requires_tensorrt",
                          "tests/test_backends.py", "tests/test_tensorrt.py"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    n = sum(1 for line in res.stdout.splitlines() if "::" in line)
    return {"ok": res.returncode == 0 and n > 0, "collected": n}


def _pytest(dry_run: bool) -> dict[str, Any]:
    if dry_run:
        return {"ok": True, "skipped": "dry run: the GPU tests were collected above"}
    # the GPU tests whose subject the steps below run again (timing cache, profile range) are left to those steps:
    # every engine build counts against the 8 minutes
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "requires_tensorrt", "-p", "no:cacheprovider",
                          "-k", "not timing_cache_is_saved and not outside_the_profile",
                          "tests/test_backends.py", "tests/test_tensorrt.py"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    return {"ok": res.returncode == 0, "rc": res.returncode, "tail": res.stdout[-1500:]}


def _desktop(c: Check, fp32: Path, shape_arg: tuple[str, str], env: dict[str, str], folder: str, *, want: str) -> dict[str, Any]:
    row = c.gpu_cli("compile", str(fp32), "--target", "nvidia-desktop", "-o", folder, *shape_arg, env=env)
    if c.dry_run or not row["ok"]:
        return row
    tc = _json(c.out / folder / "manifest.json").get("settings", {}).get("timing_cache", {})
    return {**row, "ok": tc.get("state") == want and tc.get("saved") is True, "timing_cache": tc}


def _corrupt_then_build(c: Check, fp32: Path, shape_arg: tuple[str, str], env: dict[str, str], cache: Path) -> dict[str, Any]:
    target = cache / "tensorrt" / "trt-desktop.cache"
    if target.exists():
        data = bytearray(target.read_bytes())
        data[len(data) // 2: len(data) // 2 + 64] = os.urandom(64)
        target.write_bytes(bytes(data[: max(len(data) - 100, 1)]))
    row = c.gpu_cli("compile", str(fp32), "--target", "nvidia-desktop", "-o", "e_desk_corrupt", *shape_arg, env=env)
    if c.dry_run or not row["ok"]:
        return row
    tc = _json(c.out / "e_desk_corrupt" / "manifest.json").get("settings", {}).get("timing_cache", {})
    return {**row, "ok": (c.out / "e_desk_corrupt" / "model.engine").exists() and tc.get("state") in ("new", "replaced", "loaded"),
            "timing_cache": tc}


def _outside_profile(c: Check, dry_run: bool) -> dict[str, Any]:
    code = (
        "import numpy as np, sys\n"
        "from edgekit.compile import open_engine\n"
        "from edgekit.errors import EdgekitError\n"
        "try:\n"
        "    with open_engine('e_dyn') as (eng, _):\n"
        "        name = eng.inputs[0].name\n"
        "        eng.run({name: np.zeros((8, 3, 224, 224), np.float32)})\n"
        "except EdgekitError as exc:\n"
        "    print(exc.message); sys.exit(exc.exit_code)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=c.out, timeout=600)
    if dry_run:  # no engine was built: loading the folder must say so (exit 2), never crash
        return {"ok": res.returncode in (2, 4), "rc": res.returncode, "message": res.stdout.strip()[-300:]}
    ok = res.returncode == 2 and "outside the engine's optimisation profile" in res.stdout and "[4, 3, 224, 224]" in res.stdout
    return {"ok": ok, "rc": res.returncode, "message": res.stdout.strip()[-300:], "stderr": res.stderr[-500:]}


def main() -> None:
    ap = argparse.ArgumentParser(description="edgekit's first-GPU check for TensorRT")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: run the non-GPU parts, check the GPU commands stop with exit 4")
    ap.add_argument("--out", default="", help="working folder for models and engines (default: a new temporary folder)")
    ap.add_argument("--model", default="", help="an exported FP32 EfficientNet-Lite0 ONNX (default: export one)")
    ap.add_argument("--samples", type=int, default=16, help="calibration samples for quantize")
    ap.add_argument("--skip-collect", action="store_true", help="do not collect the requires_tensorrt tests (a test suite already does)")
    ap.add_argument("--int8", default="", help="a QDQ model `edgekit quantize --target tensorrt` wrote from --model (skips quantize)")
    summary = run(ap.parse_args())
    sys.exit(0 if summary["ok"] else 3)


if __name__ == "__main__":
    main()
