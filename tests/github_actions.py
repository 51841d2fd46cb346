"""Run a GitHub Actions job's steps here, in order, the way the runner would (for tests of examples/).

`run:` steps run as GitHub runs them (`bash --noprofile --norc -eo pipefail FILE` under `shell: bash`) with
the variables the runner sets (GITHUB_STEP_SUMMARY, GITHUB_OUTPUT, GITHUB_ENV, RUNNER_TEMP, ...) pointing at
temporary files; `if:` and `${{ }}` expressions are evaluated. `uses:` steps need a stand-in: the caller
passes one per action (e.g. actions/cache backed by a folder). An expression or action this module does not
know fails the test, so the example cannot grow steps that nothing checks.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

_CONTEXT = re.compile(r"(github|env|runner|steps|inputs|vars)((?:\.[A-Za-z_][\w-]*)+)")
_TOKEN = re.compile(r"\s*(?:(\(|\))|('(?:[^']|'')*')|(&&|\|\||==|!=|!)|(always|success|failure|cancelled)\(\)|"
                    r"(true|false|null)\b|(-?\d+(?:\.\d+)?)|" + _CONTEXT.pattern + r")")


@dataclasses.dataclass
class StepResult:
    name: str
    outcome: str  # success, failure, skipped
    seconds: float = 0.0
    output: str = ""


@dataclasses.dataclass
class Job:
    """One job of a workflow file, and the state a runner keeps while running it."""

    workflow: dict[str, Any]
    job: dict[str, Any]
    github: dict[str, str]
    runner: dict[str, str]
    env: dict[str, str]
    steps: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # id -> outputs, outcome
    failed: bool = False
    summaries: list[str] = dataclasses.field(default_factory=list)  # each run: step's GITHUB_STEP_SUMMARY

    # --- expressions ---------------------------------------------------------------------

    def _lookup(self, ctx: str, dotted: str) -> Any:
        parts = dotted.strip(".").split(".")
        value: Any = {"github": self.github, "env": self.env, "runner": self.runner, "steps": self.steps}.get(ctx)
        if value is None:
            raise AssertionError(f"the example uses the {ctx!r} context, which the test runner does not provide")
        for p in parts:
            value = value.get(p, "") if isinstance(value, dict) else ""
        return value

    def evaluate(self, expr: str) -> Any:
        """A GitHub expression: contexts, '...' literals, == != ! && || and the status functions."""
        py, pos = [], 0
        while pos < len(expr.rstrip()):
            m = _TOKEN.match(expr, pos)
            if not m:
                raise AssertionError(f"expression {expr!r}: the test runner cannot evaluate {expr[pos:]!r}")
            paren, lit, op, fn, const, num, ctx, dotted = m.groups()
            if paren:
                py.append(paren)
            elif lit is not None:
                py.append(repr(lit[1:-1].replace("''", "'")))
            elif op:
                py.append({"&&": " and ", "||": " or ", "!": " not ", "==": "==", "!=": "!="}[op])
            elif fn:
                py.append(repr({"always": True, "success": not self.failed, "failure": self.failed, "cancelled": False}[fn]))
            elif const:
                py.append({"true": "True", "false": "False", "null": "None"}[const])
            elif num:
                py.append(num)
            else:
                py.append(repr(self._lookup(ctx, dotted)))
            pos = m.end()
        return eval("".join(py), {"__builtins__": {}})  # noqa: S307 - built from the tokens above only

    def substitute(self, text: str) -> str:
        return re.sub(r"\$\{\{(.*?)\}\}", lambda m: str(self.evaluate(m.group(1))), text)

    def should_run(self, step: dict[str, Any]) -> bool:
        cond = str(step.get("if", "")).strip()
        if cond.startswith("${{") and cond.endswith("}}"):
            cond = cond[3:-2]
        if not cond:
            return not self.failed
        if not re.search(r"\b(always|success|failure|cancelled)\(\)", cond):
            cond = f"success() && ({cond})"
        return bool(self.evaluate(cond))

    # --- steps -------------------------------------------------------------------------

    def run(self, *, workspace: Path, temp: Path, actions: dict[str, Callable[[Job, dict[str, str]], dict[str, str]]],
            base_env: dict[str, str], timeout: float = 600) -> list[StepResult]:
        results = []
        path_prefix: list[str] = []
        for i, step in enumerate(self.job["steps"]):
            name = step.get("name") or step.get("uses") or f"step {i}"
            if not self.should_run(step):
                results.append(StepResult(name, "skipped"))
                continue
            t0 = time.perf_counter()
            outputs: dict[str, str] = {}
            if "uses" in step:
                action = step["uses"].split("@")[0]
                if action not in actions:
                    raise AssertionError(f"the example uses {step['uses']}, which the test has no stand-in for")
                with_ = {k: self.substitute(str(v)) for k, v in (step.get("with") or {}).items()}
                outputs = actions[action](self, with_)
                outcome, text = "success", ""
            else:
                outcome, text, outputs = self._run_script(step, i, workspace=workspace, temp=temp, base_env=base_env,
                                                          path_prefix=path_prefix, timeout=timeout)
            if step.get("id"):
                self.steps[step["id"]] = {"outputs": outputs, "outcome": outcome}
            if outcome == "failure":
                self.failed = True
            results.append(StepResult(name, outcome, time.perf_counter() - t0, text))
        return results

    def _run_script(self, step: dict[str, Any], i: int, *, workspace: Path, temp: Path, base_env: dict[str, str],
                    path_prefix: list[str], timeout: float) -> tuple[str, str, dict[str, str]]:
        shell = step.get("shell") or self.job.get("defaults", {}).get("run", {}).get("shell") \
            or self.workflow.get("defaults", {}).get("run", {}).get("shell") or "bash"
        if shell != "bash":
            raise AssertionError(f"the test runner runs `shell: bash` steps only, not {shell!r}")
        files = {k: temp / f"step{i}.{k.lower()}" for k in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH", "GITHUB_STEP_SUMMARY")}
        for f in files.values():
            f.write_text("")
        script = temp / f"step{i}.sh"
        script.write_text(self.substitute(step["run"]))
        env = {**base_env, **self.env, **{k: self.substitute(str(v)) for k, v in (step.get("env") or {}).items()},
               **{k: str(v) for k, v in files.items()}}
        env["PATH"] = os.pathsep.join([*path_prefix, env["PATH"]])
        cwd = workspace / step.get("working-directory", ".")
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        self.env.update(_key_values(files["GITHUB_ENV"].read_text()))
        path_prefix[:0] = [line for line in files["GITHUB_PATH"].read_text().splitlines()[::-1] if line]
        self.summaries.append(files["GITHUB_STEP_SUMMARY"].read_text())
        return ("success" if proc.returncode == 0 else "failure"), proc.stdout, _key_values(files["GITHUB_OUTPUT"].read_text())


def _key_values(text: str) -> dict[str, str]:
    """NAME=value lines and NAME<<DELIM ... DELIM blocks (the runner's GITHUB_OUTPUT / GITHUB_ENV format)."""
    out, lines = {}, iter(text.splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, delim = line.split("<<", 1)
            out[key] = "\n".join(iter(lambda: next(lines), delim))
        elif "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


def _str(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def load_job(workflow_file: Path, *, event: str, ref: str, sha: str, workspace: Path, temp: Path,
             env_overrides: dict[str, str]) -> Job:
    """The workflow's only job, with the contexts GitHub would give it for `event` on `ref`."""
    wf = yaml.safe_load(workflow_file.read_text())
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert event in triggers, f"{workflow_file} does not run on {event}"
    (job,) = wf["jobs"].values()
    github = {"event_name": event, "ref": ref, "ref_name": ref.rsplit("/", 1)[-1], "sha": sha, "workspace": str(workspace),
              "repository": "octo/edgekit-user", "run_id": "1", "base_ref": "main" if event == "pull_request" else "",
              "head_ref": "feature" if event == "pull_request" else ""}
    runner = {"os": "Linux", "arch": "X64", "temp": str(temp)}
    unknown = set(env_overrides) - set(wf.get("env", {}))
    assert not unknown, f"the example's env has no {sorted(unknown)}"
    j = Job(wf, job, github, runner, env={})
    j.env = {k: j.substitute(_str(v)) for k, v in {**wf.get("env", {}), **job.get("env", {}), **env_overrides}.items()}
    j.env.update({"CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(workspace), "GITHUB_EVENT_NAME": event,
                  "GITHUB_REF": ref, "GITHUB_REF_NAME": github["ref_name"], "GITHUB_SHA": sha, "GITHUB_REPOSITORY": github["repository"],
                  "GITHUB_BASE_REF": github["base_ref"], "GITHUB_HEAD_REF": github["head_ref"], "RUNNER_OS": "Linux", "RUNNER_TEMP": str(temp)})
    return j
