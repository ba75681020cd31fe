"""Package list for setuptools; all other metadata lives in pyproject.toml.

``configs/`` stays at the top of the repository but ships inside the wheel as the package
``universality.configs`` (with its subfolders; the YAML files are package data, see
``[tool.setuptools.package-data]``). ``pyproject.toml``'s ``packages.find`` cannot add a package
whose folder has another name, so the packages are found here: every package under
``universality/``, ``models/`` and ``analysis/``, plus ``configs/`` mapped to ``universality.configs``.
:func:`universality.resources.config_dir` locates the folder at run time, in a checkout and installed.
"""

from setuptools import find_namespace_packages, setup

CONFIGS = ["universality.configs", *(f"universality.configs.{p}" for p in find_namespace_packages("configs"))]

setup(
    packages=[*find_namespace_packages(include=["universality*", "models*", "analysis*"]), *CONFIGS],
    package_dir={"universality.configs": "configs"},
)
