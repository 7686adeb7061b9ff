"""Shunter's compiled build (setup.py, SHUNTER_COMPILE=1) in its own venv, for benchmarks and
the test that checks it gives the pure-Python results.

The venv is rebuilt whenever the source changes (a digest of setup.py, pyproject.toml and
src/ is kept beside it). The build runs on a copy of the tree, so no C extension ever lands
in src/ (where it would shadow the .py files of the editable install).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from benchmarks._external._proc import (
    BENCH_DIR,
    REPO_ROOT,
    ensure_venv,
    log,
    pip_install,
    run_measured,
    tail,
)

__all__ = ["COMPILED_VENV_DIR", "ensure_compiled", "is_compiled", "source_digest"]

COMPILED_VENV_DIR = BENCH_DIR / "venvs" / "shunter-compiled"
MYPY_SPEC = "mypy==1.13.0"  # the mypyc the build was checked with
_BUILD_FILES = ("setup.py", "pyproject.toml", "README.md")
_DIGEST_FILE = ".shunter-source-digest"
_PIP_TIMEOUT_S = 900.0


def source_digest() -> str:
    """What the compiled build is made of: setup.py, pyproject.toml and every file of src/."""
    digest = hashlib.sha256()
    paths = [REPO_ROOT / name for name in _BUILD_FILES[:2]]
    paths += sorted(p for p in (REPO_ROOT / "src").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".so"
                    and ".egg-info" not in str(p))
    for path in paths:
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def is_compiled(python: Path) -> bool:
    """Whether `python` imports the compiled simulator (`shunter.build.is_compiled`; False for
    an install too old to have it, which is rebuilt anyway)."""
    probe = "from shunter.build import is_compiled; print(is_compiled())"
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd="/",
                         check=False)
    return out.returncode == 0 and out.stdout.strip() == "True"


def ensure_compiled(venv_dir: Path = COMPILED_VENV_DIR, *, extra: tuple[str, ...] = ()) -> Path:
    """A venv with the compiled build of the current source (and `extra` packages); its python."""
    python = ensure_venv(venv_dir)
    stamp = venv_dir / _DIGEST_FILE
    digest = source_digest()
    if stamp.exists() and stamp.read_text().strip() == digest and is_compiled(python):
        if extra:
            pip_install(python, ["install", *extra], timeout_s=_PIP_TIMEOUT_S,
                        log_path=venv_dir / "pip-extra.log")
        return python
    pip_install(python, ["install", MYPY_SPEC, "setuptools>=68", "wheel", "numpy>=1.26", *extra],
                timeout_s=_PIP_TIMEOUT_S, log_path=venv_dir / "pip-tools.log")
    with tempfile.TemporaryDirectory(prefix="shunter-build-") as tmp:
        tree = Path(tmp) / "shunter"
        shutil.copytree(REPO_ROOT / "src", tree / "src",
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info"))
        for name in _BUILD_FILES:
            shutil.copy2(REPO_ROOT / name, tree / name)
        log(f"compiling Shunter with mypyc into {venv_dir} (about a minute)")
        log_path = venv_dir / "pip-compile.log"
        subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "shunter"],
                       check=False, capture_output=True)
        result = run_measured([python, "-m", "pip", "install", "--no-build-isolation", str(tree)],
                              timeout_s=_PIP_TIMEOUT_S, log_path=log_path,
                              env={**os.environ, "SHUNTER_COMPILE": "1"})
        if result.returncode != 0 or result.is_timed_out:
            raise RuntimeError(f"compiled build failed (rc={result.returncode}):\n{tail(log_path)}")
    if not is_compiled(python):
        raise RuntimeError(f"the build in {venv_dir} did not produce compiled modules")
    stamp.write_text(digest + "\n")
    return python
