"""`shunter sweep` takes the cluster's parallelism flags as `simulate` does."""

from shunter.cli import build_parser
from shunter.cli.sweep import _scenario


def test_sweep_passes_pp_and_ep_to_the_scenario() -> None:
    args = build_parser().parse_args(["sweep", "--rate", "1", "--model", "llama-2-70b",
                                      "--gpu", "a100", "--tp", "2", "--pp", "2"])
    assert (_scenario(args).sim.pp, _scenario(args).sim.ep) == (2, 1)
    args = build_parser().parse_args(["sweep", "--rate", "1", "--model", "mixtral-8x7b",
                                      "--gpu", "h100", "--tp", "2", "--ep", "2"])
    assert _scenario(args).sim.ep == 2
