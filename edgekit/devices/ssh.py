"""The system OpenSSH client: the user's ~/.ssh/config, agent, keys, ProxyJump and known_hosts apply.

edgekit adds only what makes a run safe to automate, ahead of the user's options (ssh takes the
first value it sees): never prompt (BatchMode), never accept an unknown or changed host key
(StrictHostKeyChecking=yes), notice a dead connection within ~15 s (ServerAlive*).
"""
from __future__ import annotations

import shlex
import shutil
import subprocess

from edgekit.devices.config import Device
from edgekit.errors import BackendUnavailable, EdgekitError

FORCED_OPTIONS = ("BatchMode=yes", "StrictHostKeyChecking=yes", "ConnectTimeout=15", "ServerAliveInterval=5",
                  "ServerAliveCountMax=3", "LogLevel=ERROR")


def _ssh() -> str:
    exe = shutil.which("ssh")
    if exe is None:
        raise BackendUnavailable("no ssh client on this machine (edgekit reaches devices with the system OpenSSH client)",
                                 hint="install it: apt-get install openssh-client (or your system's OpenSSH package)")
    return exe


def _base_argv(device: Device) -> list[str]:
    argv = [_ssh(), "-T"]
    if device.ssh_config:
        argv += ["-F", device.ssh_config]
    for o in FORCED_OPTIONS + device.ssh_options:
        argv += ["-o", o]
    if device.port:
        argv += ["-p", str(device.port)]
    if device.user:
        argv += ["-l", device.user]
    return argv


# the agent's source arrives as the first line of stdin (JSON-quoted): a short command line in `ps` on the device
BOOTSTRAP = "import sys, json; exec(compile(json.loads(sys.stdin.buffer.readline()), 'edgekit-agent', 'exec'))"


def remote_python_command(device: Device, code: str = BOOTSTRAP) -> str:
    """A POSIX shell line that runs `code` with the device's Python (an executable or a venv folder)."""
    py = device.python
    if py == "~" or py.startswith("~/"):
        quoted = '"$HOME"' + (shlex.quote(py[1:]) if len(py) > 1 else "")
    else:
        quoted = shlex.quote(py)
    return (f'P={quoted}; if [ -d "$P" ]; then P="$P/bin/python"; fi; '
            f'command -v "$P" >/dev/null 2>&1 || {{ echo "edgekit: no Python at $P" >&2; exit 127; }}; '
            f'exec "$P" -c {shlex.quote(code)}')


def ssh_argv(device: Device, remote_command: str) -> list[str]:
    return _base_argv(device) + ["--", device.host, remote_command]


def effective_config(device: Device) -> dict[str, str]:
    """What ssh will use for this device (`ssh -G`: HostName, Port, User, UserKnownHostsFile...), without connecting."""
    try:
        done = subprocess.run(_base_argv(device) + ["-G", device.host], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    cfg: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        cfg.setdefault(key.lower(), value)
    return cfg


def connection_error(device: Device, stderr: str) -> EdgekitError:
    """One line for a failed connection (ssh exit 255) that names the fix."""
    cfg = effective_config(device)
    host, port = cfg.get("hostname", device.host), cfg.get("port", str(device.port or 22))
    user = cfg.get("user", device.user or "")
    known = (cfg.get("userknownhostsfile", "~/.ssh/known_hosts").split() or ["~/.ssh/known_hosts"])[0]
    key_name = host if port == "22" else f"[{host}]:{port}"
    port_flag = "" if port == "22" else f" -p {port}"
    who = f"device {device.name} ({user + '@' if user else ''}{host}:{port})"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    last = lines[-1] if lines else "ssh exited 255"
    text = stderr.lower()
    if "remote host identification has changed" in text or "host key for" in text and "has changed" in text:
        return BackendUnavailable(f"{who}: its host key has CHANGED since it was recorded in {known}; edgekit refuses it (it may be a reinstalled device, or an attack)",
                                  hint=f"if the device was reinstalled, check its new key there (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then: ssh-keygen -R '{key_name}' -f {known} && ssh-keyscan{port_flag} {host} >> {known}")
    if "host key verification failed" in text or "no " in text and "host key is known" in text:
        return BackendUnavailable(f"{who}: its host key is not in {known}; edgekit never accepts an unseen host key",
                                  hint=f"check the key's fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then add it: ssh-keyscan{port_flag} {host} >> {known}")
    if "permission denied" in text or "too many authentication failures" in text:
        return BackendUnavailable(f"{who}: the device refused every key offered ({last})",
                                  hint=f"install your public key there (ssh-copy-id{port_flag} {user + '@' if user else ''}{host}), or name the right one: ssh_options = [\"IdentityFile=~/.ssh/KEY\"] in [devices.{device.name}]")
    if "closed by remote host" in text or "connection reset" in text or "broken pipe" in text:
        return BackendUnavailable(f"{who}: the connection was lost ({last})", hint=f"run again when the device is reachable (check: ssh{port_flag} {user + '@' if user else ''}{host} true); the next run removes any folder this one left there")
    if any(s in text for s in ("connection refused", "timed out", "no route to host", "could not resolve", "network is unreachable", "connection closed")):
        return BackendUnavailable(f"{who} is not reachable: {last}", hint=f"check that it is on and sshd runs there: ssh{port_flag} {user + '@' if user else ''}{host} true")
    return BackendUnavailable(f"{who}: ssh failed: {last}", hint=f"try it by hand: ssh{port_flag} {user + '@' if user else ''}{host} true")
