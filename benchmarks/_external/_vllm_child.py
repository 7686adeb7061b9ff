"""Runs INSIDE the vLLM venv (started as a script by `vllm_cpu.py`); stdlib + vllm/transformers.

Subcommands:
  convert GGUF_PATH OUT_DIR            GGUF -> HF directory (config, fp32 safetensors, tokenizer)
  throughput SPEC_JSON RESULT_JSON     offline LLM.generate timing with max_num_seqs = concurrency

Not imported by Shunter code and not part of the shunter package: it needs vLLM's venv.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

__all__ = ["convert", "main", "throughput"]


def convert(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize `gguf_path` with transformers' GGUF reader and save a plain HF checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # float32: Q4_1 dequantizes to d * q + m with fp16 d and m, which bf16 cannot hold exactly;
    # fp32 keeps the GGUF's values bit for bit (vLLM casts to its own dtype at load).
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                 dtype=torch.float32)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _gguf_chat_template(gguf_path)
    model = _without_gguf_quantizer(model)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    # Fail here, not in a benchmark an hour later, if the conversion lost the chat template.
    assert tokenizer.chat_template, "GGUF carried no chat template"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    reply = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    print(json.dumps({"smoke_reply": reply}), flush=True)


def _without_gguf_quantizer(model):
    """The same weights in a model transformers will serialize.

    The GGUF loader dequantizes every tensor (Q4_1 -> float) but still tags the model with a
    "GGUF quantizer", and save_pretrained refuses such models. Rebuild from a config without
    `quantization_config` and copy the (already dense) weights over, strictly.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict(), strict=True)
    bad = [name for name, p in clean.named_parameters() if p.dtype != torch.float32]
    assert not bad, f"non-fp32 parameters after conversion: {bad[:5]}"
    return clean.eval()


def _gguf_chat_template(gguf_path: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields.get("tokenizer.chat_template")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def throughput(spec: dict, result_path: Path) -> None:
    """Time `LLM.generate` over `spec["prompts"]` (token ids); warm-up excluded."""
    start_s = time.perf_counter()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    concurrency = int(spec["concurrency"])
    llm = LLM(model=spec["model_dir"], max_num_seqs=concurrency, enforce_eager=True,
              dtype=spec.get("dtype", "bfloat16"), seed=0,
              max_model_len=int(spec["max_model_len"]))
    startup_s = time.perf_counter() - start_s
    params = SamplingParams(temperature=0.0, max_tokens=int(spec["output_len"]), ignore_eos=True)
    prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in spec["prompts"]]
    # Warm-up: one full wave at the same concurrency (first-call allocations, oneDNN kernels).
    llm.generate(prompts[:concurrency], params, use_tqdm=False)
    begin_s = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    wall_s = time.perf_counter() - begin_s
    num_output_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    num_prompt_tokens = sum(len(o.prompt_token_ids or ()) for o in outputs)
    result = {"tokens_per_s": num_output_tokens / wall_s, "wall_s": wall_s,
              "num_output_tokens": num_output_tokens, "num_prompt_tokens": num_prompt_tokens,
              "num_requests": len(outputs), "concurrency": concurrency,
              "startup_s": startup_s, "first_output_ids": list(outputs[0].outputs[0].token_ids)}
    result_path.write_text(json.dumps(result))


def main(argv: list[str]) -> None:
    command, *rest = argv
    if command == "convert":
        convert(Path(rest[0]), Path(rest[1]))
    elif command == "throughput":
        throughput(json.loads(Path(rest[0]).read_text()), Path(rest[1]))
    else:
        raise SystemExit(f"unknown subcommand {command!r}; valid: convert, throughput")


if __name__ == "__main__":
    main(sys.argv[1:])
