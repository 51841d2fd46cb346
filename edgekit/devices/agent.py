"""The device side of a remote run: this file's text is sent over SSH and run by the device's Python.

It imports nothing from edgekit: it calls the device's own `edgekit` command (the command line is
the contract that holds across versions), so an older or missing edgekit there is reported, not
crashed on. It runs on Python 3.8 and later, on Linux.

Protocol. stdin: one JSON header line; once this side says `ready` (edgekit is there, the work
folder has room), `payload` bytes (the bundle as a tar). stdin then stays open for the whole run: its end means the connection was cut, and the run stops its child process
and removes its folder. stdout: one `EDGEKIT-EVENT {json}` line per event, the last one `result`
or `error`; everything else goes to stderr.

Each run works in a fresh folder `WORKDIR/run-*` holding an exclusive lock (flock) for its whole
life; a later run removes every `run-*` folder whose lock nobody holds (a run cut hard: the device
rebooted, or the processes were killed before they could clean up).
"""
import errno
import fcntl
import glob
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

EVENT = "EDGEKIT-EVENT "
RUN_PREFIX = "run-"
NEW_PREFIX = ".new-run-"
LOCK = ".edgekit-run.lock"
MARGIN = 16 << 20  # reports, logs and the backend's caches beside the extracted bundle


class Failure(Exception):
    def __init__(self, kind, message, **extra):
        Exception.__init__(self, message)
        self.kind, self.message, self.extra = kind, message, extra


def _write(stream, text):
    """Write to the other side; when it has gone (EPIPE), carry on: the run still has to clean up."""
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        pass


def emit(event, **data):
    data["event"] = event
    _write(sys.stdout, EVENT + json.dumps(data) + "\n")


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip().strip("\x00")
    except (OSError, UnicodeDecodeError):
        return None


def _int(path):
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _command(argv, timeout=5.0):
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=timeout, universal_newlines=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def snapshot():
    """What the device exposes of its clocks, governor, temperatures and throttling, right now."""
    cpus = {}
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*")):
        f = os.path.join(d, "cpufreq")
        cur = _int(os.path.join(f, "scaling_cur_freq"))
        if cur is None:
            continue
        cpus[os.path.basename(d)] = {"mhz": cur / 1000.0, "max_mhz": (_int(os.path.join(f, "cpuinfo_max_freq")) or 0) / 1000.0 or None,
                                     "governor": _read(os.path.join(f, "scaling_governor"))}
    temps, hot = {}, []
    for z in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        t = _int(os.path.join(z, "temp"))
        if t is None:
            continue
        name = _read(os.path.join(z, "type")) or os.path.basename(z)
        temps[name] = t / 1000.0
        for trip in glob.glob(os.path.join(z, "trip_point_*_type")):
            if _read(trip) == "passive":
                limit = _int(trip[: -len("type")] + "temp")
                if limit and t >= limit:
                    hot.append("%s at %.1f C, at or over its passive trip point %.1f C" % (name, t / 1000.0, limit / 1000.0))
    throttle_count = 0
    counters = glob.glob("/sys/devices/system/cpu/cpu[0-9]*/thermal_throttle/*_throttle_count")
    for c in counters:
        throttle_count += _int(c) or 0
    snap = {"cpus": cpus, "temperatures_c": temps, "over_passive_trip": hot,
            "throttle_count": throttle_count if counters else None}
    pi = _command(["vcgencmd", "get_throttled"])
    if pi and "=" in pi:
        snap["pi_throttled"] = int(pi.split("=", 1)[1], 16)
    gpu = {}
    for d in glob.glob("/sys/class/devfreq/*"):
        name = os.path.basename(d)
        if "gpu" in name.lower() or "gv11b" in name or "ga10b" in name or _read(os.path.join(d, "device/of_node/name")) == "gpu":
            cur = _int(os.path.join(d, "cur_freq"))
            if cur:
                gpu[name] = cur / 1e6
    if gpu:
        snap["gpu_mhz"] = gpu
    smi = _command(["nvidia-smi", "--query-gpu=name,clocks.sm,temperature.gpu,clocks_throttle_reasons.active", "--format=csv,noheader,nounits"])
    if smi:
        snap["nvidia_smi"] = smi.splitlines()
    return snap


def device_record():
    """The device as a whole: what it is, its Jetson power mode, and where its readings come from."""
    rec = {"hostname": platform.node(), "os": platform.platform(), "machine": platform.machine(),
           "python": platform.python_version(), "python_executable": sys.executable,
           "model": _read("/proc/device-tree/model"),
           "nvidia_gpu": bool(shutil.which("nvidia-smi") or os.path.exists("/etc/nv_tegra_release") or os.path.exists("/dev/nvhost-ctrl"))}
    mode = _command(["nvpmodel", "-q"])
    if mode:
        rec["jetson_power_mode"] = mode.splitlines()[0].replace("NV Power Mode:", "").strip()
    elif os.path.exists("/etc/nv_tegra_release"):
        rec["jetson_power_mode"] = None  # a Jetson where nvpmodel is not readable to this user
    return rec


def throttle_verdict(before, after):
    """(throttled: True / False / None when the device exposes nothing to tell, the evidence)."""
    evidence = list(after.get("over_passive_trip", []))
    if before.get("throttle_count") is not None and after.get("throttle_count") is not None:
        if after["throttle_count"] > before["throttle_count"]:
            evidence.append("the CPU's thermal throttle counters rose by %d" % (after["throttle_count"] - before["throttle_count"]))
    if "pi_throttled" in after and after["pi_throttled"] & 0x6:
        evidence.append("vcgencmd get_throttled = 0x%x (throttled or frequency capped)" % after["pi_throttled"])
    for line in after.get("nvidia_smi", []):
        reasons = line.rsplit(",", 1)[-1].strip()
        if reasons.startswith("0x") and int(reasons, 16) & ~0x1:  # 0x1: idle
            evidence.append("nvidia-smi reports throttle reasons %s" % reasons)
    for cpu, b in before.get("cpus", {}).items():
        a = after.get("cpus", {}).get(cpu)
        # only a fixed-clock governor says something when the clock falls
        if a and b.get("governor") == "performance" and b.get("max_mhz") and a["mhz"] < 0.9 * b["max_mhz"]:
            evidence.append("%s ran at %.0f MHz of %.0f under the performance governor" % (cpu, a["mhz"], b["max_mhz"]))
            break
    readable = bool(after.get("temperatures_c")) or after.get("throttle_count") is not None or "pi_throttled" in after or "nvidia_smi" in after
    return (True if evidence else (False if readable else None)), evidence


class Limited(object):
    """A file-like view of the next `size` bytes of a stream (the payload; the rest of stdin is the watchdog's)."""

    def __init__(self, stream, size):
        self.stream, self.left = stream, size

    def read(self, n=-1):
        if self.left <= 0:
            return b""
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.stream.read(n)
        if not data:
            raise Failure("cut", "the connection ended while the bundle was arriving")
        self.left -= len(data)
        return data

    def drain(self):
        while self.left > 0:
            self.read(1 << 20)


def extract(stream, dest):
    """Extract a streamed tar: regular files and folders only, every path inside `dest`."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for m in tar:
            parts = m.name.replace("\\", "/").split("/")
            if m.name.startswith("/") or ".." in parts or parts[0] not in ("bundle", "extra") or not (m.isfile() or m.isdir()):
                raise Failure("bundle", "the bundle holds an unsafe member %r" % m.name)
            target = os.path.join(dest, *[p for p in parts if p not in ("", ".")])
            if m.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            src = tar.extractfile(m)
            with open(target, "wb") as f:
                shutil.copyfileobj(src, f)


def clean_orphans(workdir):
    """Remove the folders of earlier runs that nobody runs any more (their lock is free)."""
    removed = []
    for d in sorted(glob.glob(os.path.join(workdir, RUN_PREFIX + "*")) + glob.glob(os.path.join(workdir, NEW_PREFIX + "*"))):
        try:
            fd = os.open(os.path.join(d, LOCK), os.O_RDONLY)
        except OSError:
            try:  # a folder being born has no lock for a moment: leave young ones alone
                if time.time() - os.stat(d).st_mtime < 600:
                    continue
            except OSError:
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(os.path.basename(d))
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live run holds it
        shutil.rmtree(d, ignore_errors=True)
        os.close(fd)
        removed.append(os.path.basename(d))
    return removed


def new_run_folder(workdir):
    """A fresh `run-*` folder, already locked when it gets its `run-` name (so no cleaner can take it)."""
    tmp = tempfile.mkdtemp(prefix=NEW_PREFIX, dir=workdir)
    fd = os.open(os.path.join(tmp, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    final = os.path.join(workdir, RUN_PREFIX + os.path.basename(tmp)[len(NEW_PREFIX):])
    os.rename(tmp, final)
    return final, fd


class Run(object):
    def __init__(self, header):
        self.header = header
        self.folder = None
        self.child = None
        self.lock_fd = None
        self.done = threading.Event()
        self.cut = False
        self.spawning = threading.Lock()
        self.python = sys.executable

    # --- the watchdog: the end of stdin means the other side has gone ---------------------------
    def watch(self, stdin):
        try:
            while stdin.read(1 << 16):
                pass
        except (OSError, ValueError):
            pass
        if self.done.is_set():
            return
        with self.spawning:  # no child starts after this point
            self.cut = True
            child = self.child
        if child is not None and child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except OSError:
                pass
        self.cleanup()
        os._exit(70)

    def cleanup(self):
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
        if self.lock_fd is not None:
            try:
                os.close(self.lock_fd)
            except OSError:
                pass

    def edgekit(self, args, log_name):
        """Run the device's `edgekit` in the run folder: (exit code, its last error line)."""
        log = os.path.join(self.folder, log_name)
        env = dict(os.environ, EDGEKIT_PROGRESS="0")
        with open(log, "w") as err:
            with self.spawning:
                if self.cut:
                    raise Failure("cut", "the connection was cut")
                self.child = child = subprocess.Popen([self.python, "-m", "edgekit"] + args, cwd=self.folder, stdout=sys.stderr.fileno(),
                                                      stderr=err, env=env, start_new_session=True)
            rc = child.wait()
            self.child = None
        text = _read(log) or ""
        _write(sys.stderr, text + ("\n" if text else ""))
        lines = [ln for ln in text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        last = errors[-1] if errors else (lines[-1] if lines else "")
        if "No space left on device" in text:
            raise Failure("disk", "no space left on the device in %s" % self.header["workdir"])
        return rc, last[len("error:"):].strip() if last.startswith("error:") else last

    def probe(self):
        """edgekit's version on the device, or None when it is not importable by this Python."""
        try:
            import edgekit  # noqa: F401 - the device's own
        except ImportError as exc:
            emit("hello", python=platform.python_version(), python_executable=sys.executable, edgekit=None, import_error=str(exc))
            return None
        version = getattr(edgekit, "__version__", "0")
        emit("hello", python=platform.python_version(), python_executable=sys.executable, edgekit=version)
        return version

    def workdir(self):
        workdir = os.path.abspath(os.path.expanduser(self.header["workdir"]))
        try:
            os.makedirs(workdir, exist_ok=True)
        except OSError as exc:
            raise Failure("workdir", "cannot create the work folder %s on the device: %s" % (workdir, exc.strerror))
        if not os.access(workdir, os.W_OK | os.X_OK):
            raise Failure("workdir", "the work folder %s on the device is not writable" % workdir)
        self.header["workdir"] = workdir
        return workdir

    def bench(self, stdin):
        workdir = self.workdir()
        removed = clean_orphans(workdir)
        if removed:
            emit("cleaned", folders=removed)
        size = int(self.header["payload"])
        st = os.statvfs(workdir)
        free = st.f_bavail * st.f_frsize
        if free < size + MARGIN:
            raise Failure("disk", "%s on the device has %.1f MiB free, the run needs about %.1f MiB"
                          % (workdir, free / 2.0 ** 20, (size + MARGIN) / 2.0 ** 20), free=free, needed=size + MARGIN)
        self.folder, self.lock_fd = new_run_folder(workdir)
        emit("ready", path=self.folder)  # the other side sends the bundle only now
        payload = Limited(stdin, size)
        try:
            extract(payload, self.folder)
            payload.drain()
        except tarfile.TarError as exc:
            raise Failure("bundle", "the bundle arrived damaged (%s)" % exc)
        threading.Thread(target=self.watch, args=(stdin,), daemon=True).start()
        emit("received", bytes=size)
        rc, message = self.edgekit(["verify", "bundle", "--json", "verify.json"], "verify.log")
        verify = None
        try:
            with open(os.path.join(self.folder, "verify.json")) as f:
                verify = json.load(f)
        except (OSError, ValueError):
            pass
        if rc != 0:
            raise Failure("verify", message or "edgekit verify exited %d" % rc, exit_code=rc)
        for a in verify.get("artifacts", []) if verify else []:
            if not a.get("compatible"):
                raise Failure("verify", "%s: %s" % (a.get("dir"), a.get("reason")), exit_code=4)
        emit("verified")
        reports = []
        for i, job in enumerate(self.header["jobs"]):
            before, started = snapshot(), time.time()
            out = "report-%d.json" % i
            argv = job.get("argv") or ["bench", job["artifact"]] + job["args"]  # argv: another edgekit command (optimize's race)
            rc, message = self.edgekit(argv + ["--json", out], "bench-%d.log" % i)
            after, ended = snapshot(), time.time()
            throttled, evidence = throttle_verdict(before, after)
            if rc not in (0, 3):
                raise Failure("bench", message or "edgekit %s exited %d" % (argv[0], rc), exit_code=rc, job=i, command=argv[0])
            with open(os.path.join(self.folder, out)) as f:
                report = json.load(f)
            reports.append({"report": report, "exit_code": rc, "before": before, "after": after, "throttled": throttled, "throttle_evidence": evidence,
                            "started": started, "ended": ended})
            emit("measured", job=i, exit_code=rc)
        return {"reports": reports, "verify": verify}

    def doctor(self):
        workdir = self.workdir()
        st = os.statvfs(workdir)
        out = subprocess.run([self.python, "-m", "edgekit", "doctor", "--json", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True, env=dict(os.environ, EDGEKIT_PROGRESS="0"))
        try:
            report = json.loads(out.stdout)
        except ValueError:
            raise Failure("doctor", (out.stderr.strip().splitlines() or ["edgekit doctor exited %d" % out.returncode])[-1], exit_code=4)
        return {"doctor": report, "workdir": workdir, "free_bytes": st.f_bavail * st.f_frsize, "stale_runs": len(glob.glob(os.path.join(workdir, RUN_PREFIX + "*")))}


def main():
    stdin = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin
    header = json.loads(stdin.readline().decode("utf-8"))
    run = Run(header)
    try:
        version = run.probe()
        if version is None:
            raise Failure("no-edgekit", "edgekit is not importable by %s" % sys.executable)
        record = device_record()
        result = run.bench(stdin) if header["mode"] == "bench" else run.doctor()
        run.done.set()
        emit("result", device=record, **result)
    except Failure as exc:
        run.done.set()
        emit("error", kind=exc.kind, message=exc.message, **exc.extra)
    except OSError as exc:
        run.done.set()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            emit("error", kind="disk", message="no space left on the device in %s" % header.get("workdir"))
        else:
            emit("error", kind="os", message="%s: %s" % (getattr(exc, "filename", "") or "", exc.strerror or exc))
    finally:
        run.done.set()
        run.cleanup()


if __name__ == "__main__":
    main()
