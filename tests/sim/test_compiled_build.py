"""The compiled build (`shunter build`, shunter/build.py) gives exactly the pure-Python results,
and is used only while it matches the source.

The slow tests compile a copy of the package (about a minute) into a folder of their own
(`SHUNTER_BUILD_DIR`), never this environment's build, and run that copy through PYTHONPATH:
every scenario of the bulk-vs-step test gives the records the pure-Python run of the same copy
gives, and the simulator's and scheduler's own test files pass against the compiled modules.
The fast tests check when a build is used, without compiling.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shunter.build import BUILD_DIR_ENV, PURE_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "src" / "shunter"

_FINGERPRINTS = """
import hashlib, json
from shunter.build import is_compiled
from shunter.sim.runner import simulate
from tests.sim.test_fast_forward import SCENARIOS, fingerprint, varied_workload
out = {name: hashlib.sha256(repr(fingerprint(simulate(config, varied_workload(seed=5, n=150))))
                            .encode()).hexdigest() for name, config in sorted(SCENARIOS.items())}
print(json.dumps({"compiled": is_compiled(), "records": out}))
"""
_STATE = "from shunter.build import build_state, describe_build; print(describe_build(), '|', build_state())"


def copy_package(root: Path) -> dict[str, str]:
    """A copy of the package under `root`, and the environment that runs it with builds in
    `root/builds`."""
    shutil.copytree(PACKAGE, root / "src" / "shunter", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in (PURE_ENV, BUILD_DIR_ENV)}
    return env | {"PYTHONPATH": f"{root / 'src'}{os.pathsep}{REPO_ROOT}",
                  BUILD_DIR_ENV: str(root / "builds")}


def python(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def state(env: dict[str, str]) -> str:
    out = python(env, "-c", _STATE, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_a_build_is_used_only_while_it_matches_the_source(tmp_path) -> None:
    env = copy_package(tmp_path)
    assert state(env) == "pure Python | no compiled build"
    digest = python(env, "-c", "from shunter.build import source_digest; print(source_digest())")
    build = tmp_path / "builds" / digest.stdout.strip()
    build.mkdir(parents=True)  # a build with no extension in it: matched, gives nothing
    assert state(env) == f"pure Python | the compiled build in {build} lacks shunter.sim.replica"
    with open(tmp_path / "src" / "shunter" / "sim" / "loop.py", "a") as f:
        f.write("# an edit\n")
    assert state(env).startswith("pure Python | the compiled build is older than the source")
    assert state(env | {PURE_ENV: "1"}) == f"pure Python | {PURE_ENV} is set"


def test_build_without_a_compiler_says_so_and_stays_pure_python(tmp_path) -> None:
    env = copy_package(tmp_path) | {"CC": "/nonexistent/cc"}
    out = python(env, "-m", "shunter", "build", "--if-possible", timeout=60)
    assert out.returncode == 0
    assert out.stderr.strip() == ("compiled build unavailable (no C compiler (cc) on PATH): "
                                  "the simulator runs as pure Python")
    assert python(env, "-m", "shunter", "build", timeout=60).returncode == 1
    assert not (tmp_path / "builds").exists()


@pytest.fixture(scope="module")
def compiled_env(tmp_path_factory) -> dict[str, str]:
    pytest.importorskip("mypyc")
    env = copy_package(tmp_path_factory.mktemp("compiled"))
    out = python(env, "-m", "shunter", "build", timeout=1200)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return env


def fingerprints(env: dict[str, str]) -> dict:
    """Every bulk-vs-step scenario's records (hashed), as the copy simulates them under `env`."""
    out = python(env, "-c", _FINGERPRINTS)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_compiled_build_gives_the_interpreted_records(compiled_env) -> None:
    compiled, interpreted = fingerprints(compiled_env), fingerprints(compiled_env | {PURE_ENV: "1"})
    assert compiled["compiled"] and not interpreted["compiled"]
    assert compiled["records"] == interpreted["records"]


@pytest.mark.slow
def test_version_names_the_build(compiled_env) -> None:
    for env, build in ((compiled_env, "compiled with mypyc"),
                       (compiled_env | {PURE_ENV: "1"}, "pure Python")):
        out = python(env, "-m", "shunter", "--version", timeout=60)
        assert out.stdout.strip().endswith(f"({build})"), out.stdout + out.stderr


@pytest.mark.slow
def test_simulator_tests_pass_against_the_compiled_build(compiled_env) -> None:
    out = python(compiled_env, "-m", "pytest", "-p", "no:cacheprovider", "-m", "not slow",
                 "tests/sim", "tests/core", timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert " passed" in summary and int(summary.split(" passed")[0].split()[-1]) > 200, summary
