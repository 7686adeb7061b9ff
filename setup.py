"""Optional compiled build of the simulator's hot path (README, "Compiled build").

`pip install .` (or `-e .`) is pure Python. With SHUNTER_COMPILE=1 and mypy installed in the
building environment (`pip install mypy==1.13.0 setuptools wheel`, then
`SHUNTER_COMPILE=1 pip install --no-build-isolation .`), the modules `shunter.build` lists are
compiled to C extensions with mypyc into the installed package. Do not compile into an editable
install: an extension shadows its .py, so later edits to the source would be ignored (`make`
builds an editable install's compiled modules beside it instead: `shunter build`).
"""

import importlib.util
import os
import sys

from setuptools import setup

# the one list of compiled modules (shunter/build.py imports only the standard library)
_spec = importlib.util.spec_from_file_location("_shunter_build", "src/shunter/build.py")
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)
COMPILED_MODULES = _build.COMPILED_MODULES

ext_modules = []
if os.environ.get("SHUNTER_COMPILE") == "1":
    if {"editable_wheel", "develop"} & set(sys.argv):
        sys.exit("SHUNTER_COMPILE=1 needs a regular install (pip install --no-build-isolation .): "
                 "in an editable one the extensions would shadow later edits to the .py files")
    from mypyc.build import mypycify

    # silent: type errors in modules the compiled ones import (not compiled) do not stop it
    ext_modules = mypycify(["--follow-imports=silent", "--ignore-missing-imports",
                            *(f"src/shunter/{m}.py" for m in COMPILED_MODULES)], opt_level="3")

setup(ext_modules=ext_modules)
