"""Every module imports, and every command's --help works, without torch, OpenVINO or TensorRT."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def test_modules_and_help_without_optional_libraries() -> None:
    code = textwrap.dedent(
        """
        import importlib, importlib.abc, pkgutil, sys
        BLOCK = ("torch", "openvino", "tensorrt", "nncf", "onnxscript", "matplotlib", "cuda", "modelopt")
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCK:
                    raise ImportError(f"blocked {name}")
        sys.meta_path.insert(0, Blocker())
        import edgekit
        for m in pkgutil.walk_packages(edgekit.__path__, "edgekit."):
            if not m.name.endswith("__main__"):
                importlib.import_module(m.name)
        from click.testing import CliRunner
        from edgekit.cli import cli, COMMANDS
        r = CliRunner().invoke(cli, ["--help"])
        assert r.exit_code == 0, r.output
        for name in cli.list_commands(None):
            r = CliRunner().invoke(cli, [name, "--help"])
            assert r.exit_code == 0, (name, r.output)
        assert not any(m.split(".")[0] in BLOCK for m in sys.modules)
        print("ok", len(cli.list_commands(None)))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok")


def test_missing_torch_is_exit_4_naming_the_extra() -> None:
    code = textwrap.dedent(
        """
        import importlib.abc, sys
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Blocker())
        from click.testing import CliRunner
        from edgekit.cli import cli
        r = CliRunner().invoke(cli, ["export", "zoo:mixed", "-o", "/tmp/never.onnx"])
        print(r.exit_code)
        print(r.stderr)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    code_line, message = res.stdout.split("\n", 1)
    assert code_line == "4", res.stdout + res.stderr
    assert "torch==2.13.0" in message and message.startswith("error: ")
