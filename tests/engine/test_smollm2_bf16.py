"""SmolLM2 in the engine's default dtype (bfloat16) against Hugging Face transformers (issue 17).

bfloat16 logits near 25 are 0.125 apart, and SmolLM2 often has two tokens closer than that in
float32 (the README's chat prompt: "The" 25.33 vs "L" 25.24), so which one greedy picks turns on
how each operation rounds. The reference is transformers' own bfloat16 model, built from the
same dequantized weights as `from_pretrained(gguf_file=..., torch_dtype=torch.bfloat16)` loads
them; the engine has to be at least as close to float32 as it is, and answer the README's
prompts as it does.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from shunter.engine.config import EngineConfig  # noqa: E402
from shunter.engine.llm import LLMEngine  # noqa: E402
from shunter.engine.loader import LoadedModel, load_model  # noqa: E402
from shunter.engine.model.weights import build_llama  # noqa: E402
from shunter.engine.model_runner import ModelRunner  # noqa: E402
from shunter.engine.sampler import SamplingParams  # noqa: E402
from shunter.errors import ModelError  # noqa: E402
from tests.engine.tiny import TINY_CONFIG  # noqa: E402

PROMPTS = [
    "What is the capital of France?", "Say hi", "What is 2 + 2?", "Name three primary colors.",
    "Write a haiku about the sea.", "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?", "Give me a synonym for happy.",
    "Translate 'thank you' into Spanish.", "How many legs does a spider have?",
    "What is photosynthesis?", "Tell me a short joke.", "What color is the sky on a clear day?",
    "List two fruits that are red.", "What is the largest planet in our solar system?",
    "Explain what a computer is in one sentence.", "What day comes after Monday?",
    "Suggest a name for a pet cat.", "What is the opposite of cold?", "Why do we need sleep?",
    "Write one sentence about dogs.", "What language is spoken in Brazil?",
]
NUM_CONTINUATION_TOKENS = 16
README_PROMPTS = [("What is the capital of France?", 20), ("Say hi", 20)]


@pytest.fixture(scope="module")
def smollm2() -> LoadedModel:
    try:
        return load_model("smollm2-135m")
    except ModelError as exc:
        pytest.skip(f"SmolLM2 not obtainable here: {exc}")


@pytest.fixture(scope="module")
def hf32(smollm2):
    return hf_reference(smollm2, torch.float32)


@pytest.fixture(scope="module")
def hf16(smollm2):
    return hf_reference(smollm2, torch.bfloat16)


@pytest.fixture(scope="module")
def engine(smollm2) -> LLMEngine:
    engine = LLMEngine(EngineConfig(num_blocks=64), loaded=smollm2)
    assert engine.executor.runner.dtype == torch.bfloat16  # the default dtype is under test
    return engine


def keep_rope_float32(hf: transformers.LlamaForCausalLM, dtype: torch.dtype):
    """`hf` cast to `dtype`, except its RoPE frequencies: from_pretrained(torch_dtype=bfloat16)
    keeps those in float32, and `.to` alone would round them and make a worse reference."""
    inv_freq = hf.model.rotary_emb.inv_freq.clone()
    hf = hf.to(dtype)
    hf.model.rotary_emb.inv_freq = inv_freq
    return hf


def hf_reference(loaded: LoadedModel, dtype: torch.dtype) -> transformers.LlamaForCausalLM:
    """transformers' Llama with the engine's (dequantized) weights, in `dtype`."""
    cfg = loaded.config
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
        attn_implementation="sdpa")).eval()
    hf.load_state_dict(loaded.tensors, strict=False)
    hf.tie_weights()
    return keep_rope_float32(hf, dtype)


def chat_ids(loaded: LoadedModel, question: str) -> list[int]:
    tok = loaded.tokenizer
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": question}]))


def hf_greedy(hf: transformers.LlamaForCausalLM, prompt: list[int], num_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=num_tokens,
                          do_sample=False,
                          pad_token_id=hf.generation_config.eos_token_id)
    return out[0, len(prompt):].tolist()


def hf_greedy_batch(hf: transformers.LlamaForCausalLM, prompts: list[list[int]],
                    num_tokens: int) -> list[list[int]]:
    """Greedy continuations of left-padded prompts in one `generate`, each cut after its EOS."""
    eos = hf.generation_config.eos_token_id
    width = max(map(len, prompts))
    ids = torch.tensor([[eos] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=num_tokens, do_sample=False,
                          pad_token_id=eos)
    continuations = [row[width:].tolist() for row in out]
    return [c[:c.index(eos) + 1] if eos in c else c for c in continuations]


def top1(logits: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([rows.argmax(-1) for rows in logits])


def test_bf16_prefill_is_bitwise_transformers_bf16(tiny_loaded) -> None:
    """The two roundings that differed (RMSNorm: weight applied after the cast; attention: the
    fused 4-D kernel), on the tiny random model: every logit equal, bit for bit (CPU)."""
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **TINY_CONFIG, attn_implementation="sdpa")).eval()
    hf.load_state_dict(tiny_loaded.tensors)
    hf = keep_rope_float32(hf, torch.bfloat16)
    model = build_llama(tiny_loaded.config, tiny_loaded.tensors, max_positions=64,
                        dtype=torch.bfloat16)
    ids = list(range(3, 40))
    with torch.inference_mode():
        expected = hf(torch.tensor([ids])).logits[0].float()
    [got] = ModelRunner(model, num_blocks=4, block_size=16).prompt_logits(ids)
    assert torch.equal(got, expected)


@pytest.mark.slow
def test_bf16_top1_agrees_with_fp32_at_least_as_often_as_transformers_bf16(
        smollm2, hf32, hf16, engine) -> None:
    """Teacher-forced on transformers-fp32's greedy continuations of 22 chat prompts: at every
    continuation position the engine's bf16 argmax matches fp32's at least as often as
    transformers' bf16 does, and matches transformers' bf16 itself (the same roundings)."""
    runner = engine.executor.runner
    ref32, ref16, ours = [], [], []
    prompts = [chat_ids(smollm2, question) for question in PROMPTS]
    continuations = hf_greedy_batch(hf32, prompts, NUM_CONTINUATION_TOKENS)
    for prompt, continuation in zip(prompts, continuations, strict=True):
        seq = prompt + continuation
        rows = slice(len(prompt) - 1, len(seq) - 1)  # the positions that predict the continuation
        with torch.inference_mode():
            ref32.append(hf32(torch.tensor([seq])).logits[0, rows].float())
            ref16.append(hf16(torch.tensor([seq])).logits[0, rows].float())
        ours.append(torch.cat(list(runner.prompt_logits(seq)))[rows])
    fp32, hf_bf16, engine_bf16 = top1(ref32), top1(ref16), top1(ours)
    assert len(fp32) >= 20 * 8
    hf_agreement = (hf_bf16 == fp32).float().mean().item()
    engine_agreement = (engine_bf16 == fp32).float().mean().item()
    assert engine_agreement >= hf_agreement, (engine_agreement, hf_agreement)
    # On CPU the engine's bf16 prefill is bitwise transformers' (same norm rounding, same fused
    # attention kernel); before issue 17's fix it disagreed at ~2% of positions.
    assert (engine_bf16 == hf_bf16).float().mean().item() >= 0.995


@pytest.mark.slow
@pytest.mark.parametrize(("question", "max_tokens"), README_PROMPTS)
def test_bf16_greedy_answers_the_readme_prompts_as_transformers_bf16(
        smollm2, hf16, engine, question: str, max_tokens: int) -> None:
    prompt = chat_ids(smollm2, question)
    expected = hf_greedy(hf16, prompt, max_tokens)
    [done] = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens))
    assert list(done.token_ids) == expected, (done.text, smollm2.tokenizer.decode(expected))
    if "France" in question:
        assert "Paris" in done.text
