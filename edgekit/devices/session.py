"""One SSH session running the device agent: header out, events back, the bundle sent when the device is ready.

The session's stdin stays open until the agent's last event has arrived: the agent takes the end of its
input as a cut connection and stops and cleans up. Closing it early (Ctrl-C here, a crash here) therefore
stops the device's run too.
"""
from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from edgekit.devices.config import Device
from edgekit.devices.ssh import connection_error, remote_python_command, ssh_argv
from edgekit.errors import BackendUnavailable, EdgekitError, UsageError
from edgekit.version import VERSION, older

EVENT = "EDGEKIT-EVENT "
log = logging.getLogger("edgekit.devices")


def agent_source() -> str:
    return (Path(__file__).parent / "agent.py").read_text(encoding="utf-8")


def _send(stdin: BinaryIO, payload: Path) -> None:
    with contextlib.suppress(BrokenPipeError, ValueError, OSError), open(payload, "rb") as f:
        while chunk := f.read(1 << 20):
            stdin.write(chunk)
        stdin.flush()


def run_agent(device: Device, header: dict[str, Any], *, payload: Path | None = None,
              on_event: Callable[[dict[str, Any]], None] = lambda e: None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the agent on `device`: (its last event, `result` or `error`; every event). Transport failures raise (exit 4)."""
    header = dict(header, payload=payload.stat().st_size if payload else 0)
    proc = subprocess.Popen(ssh_argv(device, remote_python_command(device)), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stdin and proc.stdout and proc.stderr
    err_lines: list[str] = []

    def read_stderr() -> None:
        for raw in proc.stderr:  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace").rstrip()
            err_lines.append(line)
            log.info("%s: %s", device.name, line)

    threads = [threading.Thread(target=read_stderr, daemon=True)]
    threads[0].start()
    events: list[dict[str, Any]] = []
    final = None
    try:
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.write((json.dumps(agent_source()) + "\n" + json.dumps(header) + "\n").encode())
            proc.stdin.flush()
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            if not line.startswith(EVENT):
                log.info("%s: %s", device.name, line.rstrip())
                continue
            try:
                event = json.loads(line[len(EVENT):])
            except json.JSONDecodeError:  # a line cut short by a dying connection
                log.info("%s: %s", device.name, line.rstrip())
                continue
            events.append(event)
            on_event(event)
            if event["event"] == "ready" and payload is not None:
                writer = threading.Thread(target=_send, args=(proc.stdin, payload), daemon=True)
                writer.start()
                threads.append(writer)
            if event["event"] in ("result", "error"):
                final = event
                break
    except BaseException:
        proc.terminate()  # Ctrl-C or a bug here: the connection closes, and the device stops and cleans up its run
        raise
    finally:
        for t in threads[1:]:
            t.join(timeout=30)
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.close()  # the agent's last event came (or we are leaving): let it finish
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        threads[0].join(timeout=5)
    if final is not None:
        return final, events
    stderr = "\n".join(err_lines)
    if rc == 255 and not events:
        raise connection_error(device, stderr)
    if rc == 127 and "edgekit: no Python at" in stderr:
        raise BackendUnavailable(f"device {device.name}: no Python at {device.python!r} there",
                                 hint=f"set python = \"...\" in [devices.{device.name}] to the device's Python or virtual environment that has edgekit")
    last = next((ln for ln in reversed(err_lines) if ln.strip()), f"exit {rc}")
    if rc == 255 or events:
        raise BackendUnavailable(f"device {device.name}: the connection was lost during the run ({last})",
                                 hint="the device stops the run and removes its folder when it notices, and the next run there removes any folder left behind; run again when it is reachable")
    raise BackendUnavailable(f"device {device.name}: the device's Python failed before edgekit could start ({last})",
                             hint=f"check it by hand: ssh{' -p ' + str(device.port) if device.port else ''} {device.user + '@' if device.user else ''}{device.host} {device.python} -c 'import edgekit'")


def agent_error(device: Device, event: dict[str, Any], hello: dict[str, Any], extra: str) -> EdgekitError:
    """The error to raise for the agent's `error` event: one line that names the fix (`extra`: the edgekit extras
    the device needs, e.g. "openvino")."""
    name, kind, msg = device.name, event.get("kind"), event.get("message", "").split("; install it:")[0]  # the fix below names the device's Python
    py = hello.get("python_executable") or device.python
    spec = f"edgekit[{extra}]" if extra else "edgekit"
    install = f"{py} -m pip install '{spec}'"
    if kind == "no-edgekit":
        return BackendUnavailable(f"device {name}: {msg}", hint=f"install it there: {install} (no torch needed), or point python = \"...\" in [devices.{name}] at the environment that has it")
    if kind in ("disk", "workdir"):
        return BackendUnavailable(f"device {name}: {msg}", hint=f"free space there, or set workdir = \"...\" in [devices.{name}] to a folder on a larger, writable disk")
    if kind == "verify":
        theirs = hello.get("edgekit") or "0"
        if older(theirs, VERSION) and event.get("exit_code") != 4:
            return BackendUnavailable(f"device {name}: its edgekit {theirs} is older than this one ({VERSION}) and cannot use the bundle: {msg}",
                                      hint=f"upgrade it there: {py} -m pip install -U '{spec}>={VERSION}'")
        if event.get("exit_code") == 4 or "not available here" in msg:
            return BackendUnavailable(f"device {name} cannot run it: {msg}", hint=f"install the backend there: {install}")
        return BackendUnavailable(f"device {name}: the bundle does not verify there: {msg}", hint="run again (a damaged transfer), or compile for the device's versions")
    if kind == "bench":
        code = event.get("exit_code")
        if code == 2:
            return UsageError(f"device {name}: {msg}")
        return BackendUnavailable(f"device {name}: edgekit {event.get('command', 'bench')} failed there (exit {code}): {msg}", hint="run with -v to see the device's log")
    return BackendUnavailable(f"device {name}: {msg}")
