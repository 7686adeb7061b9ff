"""The `shunter` command: composition root. Flags and files become objects here; nothing
imports this package."""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Sequence

from shunter import __version__
from shunter.build import describe_build, run_build
from shunter.cli.common import DefaultsFormatter, add_scenario_flags, fail
from shunter.cli.simulate import run_compare, run_simulate
from shunter.core.sched.registry import POLICIES
from shunter.errors import ShunterError
from shunter.router.registry import ROUTERS
from shunter.sim.config import TOPOLOGIES

__all__ = ["build_parser", "main"]

_OWN = ("simulate", "compare", "build")  # the commands defined here

_EPILOG = "Run `shunter COMMAND --help` for the flags of each command."

# the other commands: their module and the function that adds their parser, imported only for
# the command that runs (or all of them, for the list of commands): `shunter simulate` does not
# load the gateway, the bench client or the engine's modules (7 MB and a tenth of a second)
_COMMANDS = {
    "sweep": ("sweep", "add_sweep_parser"),
    "serve": ("serve", "add_serve_parser"),
    "bench": ("bench", "add_bench_parser"),
    "batch": ("batch", "add_batch_parser"),
    "profile": ("profile", "add_profile_parser"),
    "calibrate": ("calibrate", "add_calibrate_parser"),
    "generate": ("generate", "add_generate_parser"),
    "train-predictor": ("train", "add_train_parser"),
    "train-router": ("train_router", "add_train_router_parser"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `shunter` parser; given the `command` about to run, without the other commands
    that live in modules of their own."""
    parser = argparse.ArgumentParser(
        prog="shunter", epilog=_EPILOG,
        description="Decides which LLM request runs, where, and when: one scheduling core for a "
                    "cluster simulator, a PyTorch engine and an OpenAI-compatible gateway.")
    parser.add_argument("--version", action="version",
                        version=f"shunter {__version__} ({describe_build()})")
    sub = parser.add_subparsers(  # every command's --help shows its defaults
        dest="command", metavar="COMMAND",
        parser_class=functools.partial(argparse.ArgumentParser, formatter_class=DefaultsFormatter))
    sim = sub.add_parser(
        "simulate", help="simulate a cluster serving a workload and print its metrics",
        description="Simulate a cluster serving a workload. With no arguments, runs the built-in "
                    "scenario (a sample of the real Azure 2023 conversation trace). "
                    f"Policies: {', '.join(sorted(POLICIES))}. Routers: {', '.join(sorted(ROUTERS))}. "
                    f"Topologies (a scenario's [cluster] topology): {', '.join(TOPOLOGIES)}.")
    add_scenario_flags(sim)
    sim.set_defaults(handler=run_simulate)
    cmp = sub.add_parser(
        "compare", help="run several policies or routers on the same workload, side by side",
        description="Run the same workload under several engine policies, routers or gateway "
                    "policies and print them side by side (best value per row highlighted). "
                    "One of --policy, --router, --gateway-policy lists the names to compare; the "
                    "others, given one name each, hold for every run.")
    add_scenario_flags(cmp, single=False)
    what = cmp.add_argument_group("what to compare")
    what.add_argument("--policy", metavar="A,B,...",
                      help=f"engine policies: {', '.join(sorted(POLICIES))} (default: the "
                           "scenario's)")
    what.add_argument("--router", metavar="A,B,...",
                      help=f"routers: {', '.join(sorted(ROUTERS))} (default: the scenario's)")
    what.add_argument("--gateway-policy", metavar="A,B,...",
                      help="policies of the gateway tier's queue (turns the tier on) (default: "
                           "the scenario's, else no gateway tier)")
    cmp.set_defaults(handler=run_compare)
    for name, (module, adder) in _COMMANDS.items():
        if command is None or name == command:
            getattr(importlib.import_module(f"shunter.cli.{module}"), adder)(sub)
    build = sub.add_parser(
        "build", help="compile the simulator with mypyc for this install (make runs it)",
        description="Compile the scheduler core and the simulator with mypyc (the same source, "
                    "the same results, about twice as fast) into this environment, beside the "
                    "source; used while the source is unchanged. `make run` and `make simulate` "
                    "run it. Needs a C compiler and the `compile` extra (mypy).")
    build.add_argument("--if-possible", action="store_true",
                       help="when the build cannot be made, say why and exit 0 (pure Python)")
    build.set_defaults(handler=lambda args: run_build(args.if_possible))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    command = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(command if command in _COMMANDS or command in _OWN else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (ShunterError, ValueError, OSError) as exc:  # OSError: a file named on the line
        return fail(str(exc))
    except KeyboardInterrupt:
        return fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())
