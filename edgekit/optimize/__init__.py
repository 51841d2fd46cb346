"""`optimize`: the fastest artifact for a target that still meets the accuracy budget, chosen by measuring.

Candidates are every precision the target's device runs, asked of its runtime (`precision_variants`),
INT8 from `quantize_model` (and, when no INT8 variant is accurate enough, INT8 quantized with the budget,
whose float fallback keeps sensitive nodes in float), and the backend's mixed options. Each is compiled
once, its accuracy measured against FP32 on held-out data, and its latency measured interleaved with the
others (`race`); the winner is the fastest that meets the accuracy budget and every latency budget.

`optimize_model` is the front door. The run itself is `run` (`OptimizeOptions`, `optimize_here`); its parts:
the candidates (`candidates`), the held-out data and accuracy (`data`), the interleaved race (`race`), the
choice (`choose`) and the report's table (`report`). `device` races on a device over SSH, `remote` runs the
whole optimize as one unit on an executor's node, `project` benches what optimize chooses for an edgekit.toml
entry.
"""
from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Any

from edgekit.optimize.run import REPORT, OptimizeOptions, check_arguments, optimize_here

__all__ = ["REPORT", "OptimizeOptions", "optimize_model"]


def optimize_model(model: str | Path, out_dir: str | Path, *, calib: str, options: OptimizeOptions | None = None) -> dict[str, Any]:
    """Write the winning artifact (compile folder + manifest + optimize.json) to `out_dir`; return the report.
    Raises GateFailed (exit 3, nothing written) when no candidate meets both budgets, naming the closest."""
    model, out_dir, options = Path(model), Path(out_dir), options or OptimizeOptions()
    check_arguments(out_dir, options)
    if options.executor is not None and options.executor.name != "local":
        from edgekit.optimize.remote import optimize_on

        return optimize_on(options.executor, model, out_dir, calib=calib, options=options)
    from edgekit.executors import Done

    here = Done(None, executor="local", node_id=None, host=socket.gethostname()).place()
    return optimize_here(model, out_dir, calib=calib, options=dataclasses.replace(options, executor=None), ran_on=here)
