"""Devices: `[devices.NAME]` tables of edgekit.toml, or an `ssh://user@host:port` URL.

```toml
[devices.orin]
host = "orin.lab"            # or an alias of ~/.ssh/config (HostName, User, Port, ProxyJump... apply)
user = "ci"                  # optional, as ssh's own default
port = 22                    # optional
python = "~/edgekit-venv"    # the device's Python, or its virtual environment (default python3)
workdir = "~/.cache/edgekit/device-runs"   # where runs unpack (default shown)
ssh_options = ["IdentityFile=~/.ssh/lab_ed25519", "ProxyJump=bastion"]   # extra `ssh -o` options
```
A URL takes the same keys as query parameters: `ssh://ci@orin.lab:2222?python=~/venv&workdir=/data/ek`.
"""
from __future__ import annotations

import dataclasses
import difflib
import urllib.parse
from pathlib import Path
from typing import Any

from edgekit.config import read_toml, unknown_key
from edgekit.errors import UsageError

DEFAULT_WORKDIR = "~/.cache/edgekit/device-runs"
_KEYS = ("host", "user", "port", "python", "workdir", "ssh_options", "ssh_config")
# edgekit never prompts and never accepts an unseen host key; these may not be relaxed
_LOCKED = {"stricthostkeychecking": "yes", "batchmode": "yes"}


@dataclasses.dataclass(frozen=True)
class Device:
    """Where to reach a device and how edgekit runs there."""

    name: str
    host: str
    user: str | None = None
    port: int | None = None
    python: str = "python3"  # an executable (on the device's PATH or a path) or a virtual environment folder
    workdir: str = DEFAULT_WORKDIR
    ssh_options: tuple[str, ...] = ()  # `ssh -o` options, e.g. "IdentityFile=~/.ssh/lab"
    ssh_config: str | None = None  # an ssh_config file instead of ~/.ssh/config (`ssh -F`)

    @property
    def address(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "python_setting": self.python, "workdir": self.workdir}


def device_from_table(name: str, data: Any, *, label: str) -> Device:
    if not isinstance(data, dict):
        raise UsageError(f"{label} must be a table", hint='write [devices.NAME] with host = "..."')
    for k in data:
        if k not in _KEYS:
            raise unknown_key(k, _KEYS, label)
    if not isinstance(data.get("host"), str) or not data["host"]:
        raise UsageError(f"{label}: needs host = \"...\" (a host name, address, or ~/.ssh/config alias)")
    port = data.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise UsageError(f"{label}.port must be a port number, not {port!r}")
    for k in ("user", "python", "workdir", "ssh_config"):
        if k in data and not (isinstance(data[k], str) and data[k]):
            raise UsageError(f"{label}.{k} must be a non-empty string, not {data[k]!r}")
    opts = data.get("ssh_options", [])
    if not isinstance(opts, list) or not all(isinstance(o, str) and o for o in opts):
        raise UsageError(f"{label}.ssh_options must be a list of strings like \"IdentityFile=~/.ssh/lab\"")
    for o in opts:
        key, _, value = o.replace(" ", "=", 1).partition("=")
        locked = _LOCKED.get(key.strip().lower())
        if locked is not None and value.strip().lower() != locked:
            raise UsageError(f"{label}.ssh_options: {o!r} is not allowed: edgekit always checks host keys and never prompts",
                             hint="remove it; add the device's host key to known_hosts instead (ssh-keyscan -p PORT HOST >> ~/.ssh/known_hosts, after checking it)")
    return Device(name=name, host=data["host"], user=data.get("user"), port=port, python=data.get("python", "python3"),
                  workdir=data.get("workdir", DEFAULT_WORKDIR), ssh_options=tuple(opts), ssh_config=data.get("ssh_config"))


def device_from_url(url: str) -> Device:
    """`ssh://[user@]host[:port][?python=...&workdir=...]`."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "ssh" or not u.hostname:
        raise UsageError(f"bad device URL {url!r}", hint="write it like ssh://user@host:22")
    try:
        port = u.port
    except ValueError:
        raise UsageError(f"bad device URL {url!r}: the port is not a number") from None
    data: dict[str, Any] = {"host": u.hostname}
    if u.username:
        data["user"] = urllib.parse.unquote(u.username)
    if port:
        data["port"] = port
    for k, values in urllib.parse.parse_qs(u.query, keep_blank_values=True).items():
        if k == "ssh_option":
            data.setdefault("ssh_options", []).extend(values)
        else:
            data[k] = values[-1]
    if "port" in data and isinstance(data["port"], str):
        raise UsageError(f"bad device URL {url!r}: give the port after the host (host:port)")
    return device_from_table(url, data, label=f"device {url}")


def devices_in(config: str | Path) -> dict[str, Device]:
    """The `[devices.*]` tables of a project file (its other tables are the bench's business)."""
    path = Path(config)
    data = read_toml(path).get("devices", {})
    if not isinstance(data, dict):
        raise UsageError(f"{path}: devices must be tables: [devices.NAME]")
    return {name: device_from_table(name, table, label=f"{path} [devices.{name}]") for name, table in data.items()}


def resolve_device(name: str, *, config: str | Path | None = None) -> Device:
    """A device by URL, or by name from `config` (default: ./edgekit.toml)."""
    if name.startswith("ssh://"):
        return device_from_url(name)
    path = Path(config) if config else Path("edgekit.toml")
    if not path.exists():
        raise UsageError(f"device {name!r}: no {path} to look it up in",
                         hint=f"add [devices.{name}] with host = \"...\" to edgekit.toml (or pass --config), or give ssh://user@host:port")
    known = devices_in(path)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        raise UsageError(f"{path} has no device {name!r}", hint=f"did you mean {close[0]!r}?" if close else
                         (f"known devices: {', '.join(sorted(known))}; " if known else "") + f"add [devices.{name}] with host = \"...\", or give ssh://user@host:port")
    return known[name]
