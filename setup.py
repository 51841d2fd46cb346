"""The one thing pyproject.toml cannot say: the top-level `targets/` and `calibration/` folders are package data.

They stay where a reviewer reads them (beside edgekit/, one copy in the repository) and the build maps each one
into the wheel as the data-only package `edgekit._data.<folder>` (edgekit/_data/targets/*.toml, ...) with
setuptools' `package_dir`; the files to ship are `[tool.setuptools.package-data]` in pyproject.toml.
`edgekit.config.builtin_dir` reads them from there in a wheel and from the source tree otherwise.
Everything else about the build is in pyproject.toml.
"""
from setuptools import find_packages, setup

DATA = {f"edgekit._data.{folder}": folder for folder in ("targets", "calibration")}

setup(packages=[*find_packages(include=["edgekit", "edgekit.*"]), *DATA], package_dir=DATA)
