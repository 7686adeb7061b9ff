"""The compiled build (setup.py, SHUNTER_COMPILE=1) gives exactly the pure-Python results.

Builds it into its own venv (benchmarks/_external/compiled.py; about a minute the first time,
kept in .bench/ while the source is unchanged), then, with that venv's python: every scenario
of the bulk-vs-step test gives the records this (interpreted) process gives, and the
simulator's and scheduler's own test files pass against the compiled modules.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.factories import IS_COMPILED

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(IS_COMPILED, reason="this install is the compiled one")]

_FINGERPRINTS = """
import hashlib, json
from shunter.build import is_compiled
from shunter.sim.runner import simulate
from tests.sim.test_fast_forward import SCENARIOS, fingerprint, varied_workload
out = {name: hashlib.sha256(repr(fingerprint(simulate(config, varied_workload(seed=5, n=150))))
                            .encode()).hexdigest() for name, config in sorted(SCENARIOS.items())}
print(json.dumps({"compiled": is_compiled(), "records": out}))
"""


def fingerprints(python: str) -> dict:
    """Every bulk-vs-step scenario's records (hashed), as `python`'s shunter simulates them."""
    from benchmarks._external._proc import REPO_ROOT
    out = subprocess.run([python, "-c", _FINGERPRINTS], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def compiled_python():
    compiled = pytest.importorskip("benchmarks._external.compiled")
    return compiled.ensure_compiled(extra=("pytest>=8",))


def test_compiled_build_gives_the_interpreted_records(compiled_python) -> None:
    compiled, interpreted = fingerprints(str(compiled_python)), fingerprints(sys.executable)
    assert compiled["compiled"] and not interpreted["compiled"]
    assert compiled["records"] == interpreted["records"]


def test_version_names_the_build(compiled_python) -> None:
    for python, build in ((compiled_python, "compiled with mypyc"), (sys.executable, "pure Python")):
        out = subprocess.run([str(python), "-m", "shunter", "--version"], capture_output=True,
                             text=True, timeout=60, check=True)
        assert out.stdout.strip().endswith(f"({build})"), out.stdout


def test_simulator_tests_pass_against_the_compiled_build(compiled_python) -> None:
    from benchmarks._external._proc import REPO_ROOT
    out = subprocess.run([str(compiled_python), "-m", "pytest", "-p", "no:cacheprovider",
                          "-m", "not slow", "tests/sim", "tests/core"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert " passed" in summary and int(summary.split(" passed")[0].split()[-1]) > 200, summary
