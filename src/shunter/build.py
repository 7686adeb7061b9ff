"""Which build of Shunter runs: pure Python, or the compiled build (the scheduler core and the
simulator compiled with mypyc; the same source, the same results, about twice as fast).

Two ways to get the compiled build:
- `make run` / `make simulate` (the README's install, an editable one) run `shunter build`
  after installing: it compiles `COMPILED_MODULES` from the installed source
  into `<venv>/shunter-compiled/<digest>/`, a folder named by a digest of every `.py` file of
  the package. `activate()` (called when `shunter` is imported) puts a finder in front of
  Python's own that loads those extensions instead of the `.py` files, but only while the
  digest still matches the source: edit any file and the package runs as pure Python again,
  never stale code, until `shunter build` is run again (`shunter simulate` says so).
  No C extension ever lands in the source tree.
- `SHUNTER_COMPILE=1 pip install --no-build-isolation .` (setup.py): the extensions are built
  into the installed package itself.

Without a C compiler or mypy, `shunter build --if-possible` says so in one line and the install
stays pure Python. `SHUNTER_PURE_PYTHON=1` in the environment ignores a compiled build.

Only modules whose classes nobody subclasses are compiled: compiled classes ignore attributes an
interpreted subclass redefines (so the policy classes stay interpreted), and core/types is left
out (mypyc 1.13 miscompiles its enums).

This module imports nothing from the package (setup.py reads `COMPILED_MODULES` from it).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["BUILD_DIR_ENV", "COMPILED_MODULES", "MYPY_SPEC", "PURE_ENV", "activate",
           "build_state", "compile_build", "describe_build", "is_compiled", "run_build",
           "source_digest"]

COMPILED_MODULES = (
    "core/clock", "core/request", "core/kv/block_pool", "core/kv/hashing", "core/kv/manager",
    "core/sched/config", "core/sched/headroom",
    "core/sched/interface", "core/sched/limits", "core/sched/plan", "core/sched/queue",
    "core/sched/scheduler", "core/sched/stats", "router/interface",
    "sim/cluster", "sim/cost/moe", "sim/cost/roofline", "sim/decode_run", "sim/executor",
    "sim/flight", "sim/loop", "sim/ranking", "sim/replica", "sim/stream", "sim/timeline",
)
MYPY_SPEC = "mypy==1.13.0"  # the mypyc the build is checked with
PURE_ENV = "SHUNTER_PURE_PYTHON"
_PACKAGE_DIR = Path(__file__).resolve().parent
BUILD_DIR_ENV = "SHUNTER_BUILD_DIR"  # where builds go (default: inside this environment)
_BUILDS_DIR = Path(os.environ.get(BUILD_DIR_ENV) or Path(sys.prefix) / "shunter-compiled")
_EXT_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _source_files() -> list[Path]:
    return sorted(p for p in _PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def source_digest() -> str:
    """What a compiled build is made of: every .py file of the package, this Python's tag."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{sys.implementation.cache_tag}\0{MYPY_SPEC}\0".encode())
    for path in _source_files():
        digest.update(str(path.relative_to(_PACKAGE_DIR)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _stat_key() -> str:
    """A cheap stand-in for the digest (paths, sizes and mtimes): a build records the key it
    was made under, so a process that finds the same key skips hashing the source."""
    key = hashlib.blake2b(digest_size=12)
    for path in _source_files():
        stat = path.stat()
        key.update(f"{path.relative_to(_PACKAGE_DIR)}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
                   .encode())
    return key.hexdigest()


def _matching_build() -> Path | None:
    """The compiled build of the current source, if there is one."""
    if not _BUILDS_DIR.is_dir():
        return None
    alias = _BUILDS_DIR / f"stat-{_stat_key()}"
    if alias.is_file():
        target = _BUILDS_DIR / alias.read_text().strip()
        return target if target.is_dir() else None
    build = _BUILDS_DIR / source_digest()
    if not build.is_dir():
        return None
    with contextlib.suppress(OSError):  # the same content under other mtimes: remember it
        alias.write_text(build.name)
    return build


class _CompiledFinder(importlib.abc.MetaPathFinder):
    """Loads the compiled extension of a module listed in a build folder, else defers."""

    def __init__(self, build: Path) -> None:
        self.build = build
        self.paths = {_module_name(p, build): p for p in build.rglob(f"*{_EXT_SUFFIX}")}

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        so = self.paths.get(fullname)
        return None if so is None else importlib.util.spec_from_file_location(fullname, so)


def _module_name(so: Path, root: Path) -> str:
    return ".".join(so.relative_to(root).parts)[: -len(_EXT_SUFFIX)]


_state = {"checked": False, "build": None, "why_not": "not checked"}


def activate() -> None:
    """Install the compiled build's finder when a build matches the source (once a process)."""
    if _state["checked"]:
        return
    _state["checked"] = True
    if os.environ.get(PURE_ENV):
        _state["why_not"] = f"{PURE_ENV} is set"
        return
    if not (_PACKAGE_DIR / "sim" / "replica.py").is_file():
        _state["why_not"] = "no source beside the package"
        return
    build = _matching_build()
    if build is None:
        stale = _BUILDS_DIR.is_dir() and any(_BUILDS_DIR.glob("*/"))
        _state["why_not"] = ("the compiled build is older than the source; rebuild it with "
                             "`shunter build`" if stale else "no compiled build")
        return
    _state["build"] = build
    _state["why_not"] = f"the compiled build in {build} lacks shunter.sim.replica"
    sys.meta_path.insert(0, _CompiledFinder(build))


def is_compiled() -> bool:
    """Whether this process's simulator modules are compiled extensions."""
    replica = importlib.import_module("shunter.sim.replica")
    return not str(replica.__file__).endswith(".py")


def build_state() -> str:
    """Why this process runs pure Python (empty when it runs the compiled build)."""
    return "" if is_compiled() else str(_state["why_not"])


def describe_build() -> str:
    return "compiled with mypyc" if is_compiled() else "pure Python"


_SETUP = """
from setuptools import setup
from mypyc.build import mypycify
paths = {paths!r}
setup(name="shunter-compiled", ext_modules=mypycify(
    ["--follow-imports=silent", "--ignore-missing-imports", *paths], opt_level="3"),
    script_args=["build_ext", "--inplace", "--quiet"])
"""


def compile_build(log: bool = True) -> Path:
    """Compile the current source into its build folder (kept if already there); the folder.
    Raises RuntimeError with the reason when it cannot (no compiler, no mypy, a failed build)."""
    digest = source_digest()
    target = _BUILDS_DIR / digest
    if target.is_dir():
        return target
    if shutil.which(os.environ.get("CC", "cc")) is None:
        raise RuntimeError("no C compiler (cc) on PATH")
    if importlib.util.find_spec("mypyc") is None:
        raise RuntimeError(f"mypy is not installed (pip install '{MYPY_SPEC}')")
    with tempfile.TemporaryDirectory(prefix="shunter-compile-") as tmp:
        tree = Path(tmp)
        shutil.copytree(_PACKAGE_DIR, tree / "shunter",
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        paths = [f"shunter/{m}.py" for m in COMPILED_MODULES]
        (tree / "setup_compiled.py").write_text(_SETUP.format(paths=paths))
        if log:
            print(f"compiling {len(paths)} modules with mypyc (about a minute)...", flush=True)
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "setup_compiled.py"], cwd=tree, text=True,
                             capture_output=True, check=False, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"mypyc failed (rc {out.returncode}):\n"
                               f"{(out.stdout + out.stderr)[-2000:]}")
        staging = _BUILDS_DIR / f".{digest}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        for so in [*tree.glob(f"*{_EXT_SUFFIX}"), *(tree / "shunter").rglob(f"*{_EXT_SUFFIX}")]:
            dest = staging / so.relative_to(tree)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(so, dest)
        names = {_module_name(so, staging) for so in staging.rglob(f"*{_EXT_SUFFIX}")}
        missing = {"shunter." + m.replace("/", ".") for m in COMPILED_MODULES} - names
        if missing:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"the build made no extension for {', '.join(sorted(missing))}")
        for old in _BUILDS_DIR.iterdir():  # one build at a time: older sources' go
            if old != staging:
                (shutil.rmtree if old.is_dir() else Path.unlink)(old)
        os.replace(staging, target)
    if log:
        print(f"compiled build ready in {time.perf_counter() - start:.0f} s: {target}")
    return target


def run_build(if_possible: bool = False) -> int:
    """`shunter build [--if-possible]`: compile the simulator for this install; exit status.
    With `if_possible` a build that cannot be made is reported and the status is 0."""
    try:
        compile_build()
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        print(f"compiled build unavailable ({first}): the simulator runs as pure Python",
              file=sys.stderr)
        if str(exc) != first:
            print(str(exc), file=sys.stderr)
        return 0 if if_possible else 1
    return 0
