"""Optional compiled build of the simulator's hot path (README, "Compiled build").

`pip install .` (or `-e .`) is pure Python. With SHUNTER_COMPILE=1 and mypy installed in the
building environment (`pip install mypy==1.13.0 setuptools wheel`, then
`SHUNTER_COMPILE=1 pip install --no-build-isolation .`), the modules below are compiled to C
extensions with mypyc: the same source, about twice as fast. Do not compile into an editable
install: an extension shadows its .py, so later edits to the source would be ignored.

Only modules whose classes nobody subclasses are listed: compiled classes ignore attributes an
interpreted subclass redefines (so the policy classes stay interpreted), and core/types is left
out (mypyc 1.13 miscompiles its enums).
"""

import os
import sys

from setuptools import setup

COMPILED_MODULES = [
    "core/request", "core/kv/block_pool", "core/kv/hashing", "core/kv/manager",
    "core/sched/config", "core/sched/headroom",
    "core/sched/interface", "core/sched/limits", "core/sched/plan", "core/sched/queue",
    "core/sched/scheduler", "core/sched/stats",
    "sim/cluster", "sim/cost/moe", "sim/cost/roofline", "sim/executor", "sim/loop", "sim/replica",
    "sim/decode_run", "sim/timeline",
]

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
