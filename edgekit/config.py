"""TOML target profiles and project files -> frozen dataclasses. Unknown keys are errors.

A target is a named place to deploy: backend + device + precision + backend options +
bench settings + budgets. A bare backend name is a target with default settings.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
import typing
from pathlib import Path
from typing import Any, TypeVar

from edgekit.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")
STATS = ("p50", "p90", "p95", "p99", "mean", "max", "min")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file", hint="check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}", hint="fix the syntax") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def unknown_key(key: str, known: typing.Iterable[str], label: str) -> UsageError:
    """The error for a key no table of `label` takes: suggests the closest known key, else lists them."""
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1)
    return UsageError(f"{label}: unknown key {key!r}", hint=f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}")


def dataclass_from_table(cls: type[T], data: dict[str, Any], *, label: str) -> T:
    """Build a (frozen) options dataclass from a TOML table, checking keys and value types."""
    if not isinstance(data, dict):
        raise UsageError(f"{label} must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise unknown_key(key, fields, label)
        kwargs[key] = _coerce(value, hints[key], f"{label}.{key}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, label: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{label} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{label} must be an integer, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{label} must be a number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UsageError(f"{label} must be a string, not {value!r}")
        return value
    if origin in (dict, list, tuple):
        expected = {dict: dict, list: list, tuple: (list, tuple)}[origin]
        if not isinstance(value, expected):
            raise UsageError(f"{label} must be a {origin.__name__}, not {value!r}")
        return tuple(value) if origin is tuple else value
    return value


# --- budgets -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Budget:
    """`p99=33ms`: a statistic of the latency must stay at or under a number of milliseconds."""

    stat: str
    ms: float

    @classmethod
    def parse(cls, text: str) -> Budget:
        m = re.fullmatch(r"\s*(\w+)\s*[=<]+\s*([0-9.]+(?:e-?\d+)?)\s*(ms|us|µs|s)?\s*", text)
        if not m:
            raise UsageError(f"bad budget {text!r}", hint=f"write it like p90=10ms (statistics: {', '.join(STATS)})")
        stat, num, unit = m.group(1).lower(), float(m.group(2)), m.group(3)
        if unit is None:  # 33 what? a bare number was read as ms before, silently
            raise UsageError(f"bad budget {text!r}: the number has no unit", hint=f"write it with its unit, e.g. {stat}={m.group(2)}ms (ms, us or s)")
        if stat not in STATS:
            raise UsageError(f"bad budget {text!r}: unknown statistic {stat!r}", hint=f"use one of {', '.join(STATS)}")
        ms = num * {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}[unit]
        if ms <= 0:
            raise UsageError(f"bad budget {text!r}: must be > 0")
        return cls(stat, ms)

    def __str__(self) -> str:
        return f"{self.stat}<={self.ms:g}ms"


def budgets_from_table(data: dict[str, Any], *, label: str) -> tuple[Budget, ...]:
    out = []
    for k, v in data.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            raise UsageError(f"{label}: budget {k} = {v} has no unit", hint=f'write it with its unit: {k} = "{v}ms" (ms, us or s)')
        if not isinstance(v, str):
            raise UsageError(f"{label}: budget {k} must be a string with a unit, like {k} = \"33ms\"")
        try:
            out.append(Budget.parse(f"{k}={v}"))
        except UsageError as exc:
            raise UsageError(f"{label}: {exc.message}", hint=exc.hint) from None
    return tuple(out)


# --- bench settings ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """trtexec-like defaults: 200 ms warm-up, at least 10 iterations and 3 s."""

    warmup_ms: float = 200.0
    min_iterations: int = 10
    min_duration_s: float = 3.0
    max_duration_s: float = 30.0  # cap when a budget's interval straddles the budget
    batch: int = 1
    confidence: float = 0.95
    shapes: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.warmup_ms < 0 or self.min_iterations < 1 or self.min_duration_s < 0 or self.batch < 1:
            raise UsageError("bench settings: warmup_ms >= 0, min_iterations >= 1, min_duration_s >= 0, batch >= 1")
        if self.max_duration_s < self.min_duration_s:
            raise UsageError("bench settings: max_duration_s must be >= min_duration_s")
        if not 0.5 < self.confidence < 1:
            raise UsageError("bench settings: confidence must be between 0.5 and 1 (e.g. 0.95)")


# --- targets -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    backend: str
    device: str = "CPU"
    precision: str = "fp32"
    description: str = ""
    options: Any = None
    bench: BenchSettings = BenchSettings()
    budgets: tuple[Budget, ...] = ()
    source: str = ""  # the profile file, "" for a bare backend name
    cpu_features: tuple[str, ...] = ()  # the device CPU's ([device] cpu_features); ("host",) = this machine, () = unsaid

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "backend": self.backend, "device": self.device, "precision": self.precision,
            "description": self.description, "options": dataclasses.asdict(self.options) if self.options is not None else {},
            "bench": dataclasses.asdict(self.bench), "budgets": [str(b) for b in self.budgets], "source": self.source,
            "cpu_features": list(self.cpu_features),
        }


_TARGET_KEYS = {"name", "backend", "device", "precision", "description", "options", "bench", "budgets"}
_DEFAULT_DEVICE = {"tensorrt": "GPU"}


def builtin_dir(name: str) -> Path:
    """edgekit's own data folder `name` ("targets" or "calibration"), one copy wherever edgekit runs from.

    The folders live at the top of the repository; the build maps each into the wheel as the data package
    `edgekit._data.<name>` (setup.py), so an installed wheel has them at edgekit/_data/<name>/. A checkout on
    sys.path and an editable install import edgekit from the source tree, where the folder is beside edgekit/.
    """
    here = Path(__file__).resolve().parent
    installed = here / "_data" / name
    return installed if installed.is_dir() else here.parent / name


# Built-in data: package data in the wheel, the top-level folders in a checkout (see builtin_dir).
PACKAGED_TARGETS = builtin_dir("targets")
PACKAGED_MANIFESTS = builtin_dir("calibration")


def profile_dirs() -> list[tuple[str, Path]]:
    """Where `--target NAME` looks for NAME.toml, first match wins: (origin, folder).

    The user's folders come before the built-in profiles, so a team can override `cpu-openvino`
    with its own budgets without touching the installed package. Run in edgekit's own checkout,
    ./targets is the built-in folder itself: it is listed once, as built-in.
    """
    dirs = [("EDGEKIT_TARGETS", Path(p)) for p in os.environ.get("EDGEKIT_TARGETS", "").split(os.pathsep) if p]
    if not _same_folder(Path.cwd() / "targets", PACKAGED_TARGETS):
        dirs.append(("./targets", Path.cwd() / "targets"))
    dirs.append(("built-in", PACKAGED_TARGETS))
    return dirs


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.is_dir() and b.is_dir() and a.samefile(b)
    except OSError:
        return False


def target_dirs() -> list[Path]:
    return [d for _, d in profile_dirs()]


def packaged_manifest(source: str) -> Path | None:
    """`--calib NAME` or `--calib edgekit:NAME`: a calibration manifest that ships with edgekit, or None.

    Only called for a source that is not an existing path, so a user's own file or folder always wins.
    """
    name = source.removeprefix("edgekit:")
    if name.endswith(".toml"):
        name = name[: -len(".toml")]
    candidate = PACKAGED_MANIFESTS / f"{name}.toml"
    if name and "/" not in name and os.sep not in name and candidate.is_file():
        return candidate
    if source.startswith("edgekit:"):
        close = difflib.get_close_matches(name, packaged_manifest_names(), n=1)
        raise UsageError(f"{source}: edgekit ships no calibration manifest {name!r}",
                         hint=f"did you mean 'edgekit:{close[0]}'?" if close else f"built-in manifests: {', '.join(packaged_manifest_names()) or 'none'}")
    return None


def packaged_manifest_names() -> list[str]:
    return sorted(p.stem for p in PACKAGED_MANIFESTS.glob("*.toml"))


def target_from_dict(data: dict[str, Any], *, name: str, source: str = "") -> Target:
    from edgekit.backends import get_backend
    from edgekit.backends.base import PRECISIONS

    label = source or name
    for key in data:
        if key not in _TARGET_KEYS:
            raise unknown_key(key, _TARGET_KEYS, label)
    if "backend" not in data:
        raise UsageError(f"{label}: no backend", hint="add backend = \"openvino\" (or onnxruntime, tensorrt)")
    backend = get_backend(data["backend"])
    precision = data.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise UsageError(f"{label}: precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    options = dataclass_from_table(backend.options_type, data.get("options", {}), label=f"{label} [options]")
    bench = dataclass_from_table(BenchSettings, data.get("bench", {}), label=f"{label} [bench]")
    budgets = budgets_from_table(data.get("budgets", {}), label=f"{label} [budgets]")
    device, cpu_features = _device_table(data.get("device", _DEFAULT_DEVICE.get(backend.name, "CPU")), label=label)
    return Target(
        name=data.get("name", name), backend=backend.name, device=device,
        precision=precision, description=data.get("description", ""), options=options, bench=bench, budgets=budgets, source=source,
        cpu_features=cpu_features,
    )


def _device_table(value: Any, *, label: str) -> tuple[str, tuple[str, ...]]:
    """`device = "CPU"`, or a `[device]` table: `name = "CPU"`, `cpu_features = ["avx2", "avx512_vnni"]` or "host"."""
    from edgekit.backends.base import CPU_FEATURES

    if isinstance(value, str):
        return value, ()
    if not isinstance(value, dict):
        raise UsageError(f"{label}: device must be a name like \"CPU\" or a [device] table")
    for key in value:
        if key not in ("name", "cpu_features"):
            raise unknown_key(key, ("name", "cpu_features"), f"{label} [device]")
    name = value.get("name", "CPU")
    feats = value.get("cpu_features", ())
    if feats == "host":
        return name, ("host",)
    if isinstance(feats, str) or not isinstance(feats, list) or not feats or not all(isinstance(f, str) for f in feats):
        raise UsageError(f"{label} [device] cpu_features must be \"host\" or a non-empty list of feature names",
                         hint=f"e.g. cpu_features = [\"avx2\"]; known: {', '.join(CPU_FEATURES)}")
    for f in feats:
        if f not in CPU_FEATURES:
            close = difflib.get_close_matches(f, list(CPU_FEATURES), n=1)
            raise UsageError(f"{label} [device] cpu_features: unknown feature {f!r}",
                             hint=f"did you mean {close[0]!r}?" if close else f"known: {', '.join(CPU_FEATURES)}, or \"host\"")
    return name, tuple(feats)


def load_target(spec: str) -> Target:
    """`--target`: a backend name, a profile name (NAME.toml in `profile_dirs()`) or a path to a .toml."""
    from edgekit.backends import backend_names

    if spec in backend_names():
        return target_from_dict({"backend": spec}, name=spec)
    path = Path(spec)
    if spec.endswith(".toml") or os.sep in spec:
        return target_from_dict(read_toml(path), name=path.stem, source=str(path))
    for d in target_dirs():
        candidate = d / f"{spec}.toml"
        if candidate.exists():
            return target_from_dict(read_toml(candidate), name=spec, source=str(candidate))
    known = sorted({p.stem for d in target_dirs() if d.is_dir() for p in d.glob("*.toml")} | set(backend_names()))
    close = difflib.get_close_matches(spec, known, n=1)
    raise UsageError(f"unknown target {spec!r}", hint=f"did you mean {close[0]!r}? (`edgekit targets` lists them)" if close else f"use a backend name, a profile ({', '.join(known)}) or a .toml path")


def target_listing() -> dict[str, Any]:
    """Every target `--target NAME` can reach, in lookup order, with where it came from.

    A profile that an earlier folder (or a backend name) shadows is listed with what shadows it;
    a profile that does not load is listed with its error instead of stopping the listing.
    """
    from edgekit.backends import backend_names

    rows: list[dict[str, Any]] = []
    winner: dict[str, str] = {}
    for b in backend_names():
        rows.append({"name": b, "origin": "backend name", "path": "", "backend": b, "device": _DEFAULT_DEVICE.get(b, "CPU"),
                     "precision": "fp32", "description": "the backend with default settings", "shadowed_by": None, "error": None})
        winner[b] = "the backend name"
    seen_dirs: set[Path] = set()
    for origin, folder in profile_dirs():
        if not folder.is_dir() or folder.resolve() in seen_dirs:
            continue
        seen_dirs.add(folder.resolve())
        for f in sorted(folder.glob("*.toml")):
            row: dict[str, Any] = {"name": f.stem, "origin": origin, "path": str(f), "shadowed_by": winner.get(f.stem), "error": None}
            try:
                t = target_from_dict(read_toml(f), name=f.stem, source=str(f))
                row.update(backend=t.backend, device=t.device, precision=t.precision, description=t.description)
            except UsageError as exc:
                row.update(backend=None, device=None, precision=None, description="", error=str(exc))
            winner.setdefault(f.stem, str(f))
            rows.append(row)
    manifests = []
    for name in packaged_manifest_names():
        path = PACKAGED_MANIFESTS / f"{name}.toml"
        try:
            description = str(read_toml(path).get("description", ""))
        except UsageError as exc:
            description = f"error: {exc}"
        manifests.append({"name": name, "path": str(path), "description": description})
    search_path = [{"origin": o, "path": str(d), "exists": d.is_dir()} for o, d in profile_dirs()]
    if _same_folder(Path.cwd() / "targets", PACKAGED_TARGETS):  # edgekit's own checkout: its targets/ is not a user's
        search_path[-1]["note"] = "./targets here is edgekit's own checkout: the built-in profiles"
    return {"targets": rows, "search_path": search_path,
            "calibration_manifests": manifests}
