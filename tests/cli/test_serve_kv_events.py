"""Issue 18: `shunter serve --kv-events-publish` makes the in-process engines publish their
KV-cache events (the config's kv_events_publish, from the command line)."""

from __future__ import annotations

import pytest

from shunter.cli import build_parser
from shunter.cli.serving import _config_from_args
from shunter.errors import ConfigError


def config_for(*flags: str):
    return _config_from_args(build_parser().parse_args(["serve", *flags]))


def test_the_flags_land_on_the_engine_backend(tmp_path) -> None:
    config = config_for("--kv-events-publish", f"ipc://{tmp_path}/kv",
                        "--kv-events-replay-publish", f"ipc://{tmp_path}/replay")
    (engine,) = config.backends
    assert engine.kind == "engine"
    assert (engine.kv_events_publish, engine.kv_events_replay_publish) == \
        (f"ipc://{tmp_path}/kv", f"ipc://{tmp_path}/replay")


def test_without_the_flags_nothing_publishes() -> None:
    (engine,) = config_for().backends
    assert engine.kv_events_publish is None


@pytest.mark.parametrize("flags, message", [
    (("--kv-events-publish", "tcp://h"), "--kv-events-publish: backend engine: "
                                         "kv_events_publish must be an address to bind"),
    (("--kv-events-replay-publish", "ipc:///tmp/r"), "kv_events_replay_publish is given but "
                                                     "no kv_events_publish"),
])
def test_bad_addresses_are_refused_naming_the_flag(flags, message) -> None:
    with pytest.raises(ConfigError, match=message):
        config_for(*flags)


def test_a_config_without_one_engine_backend_is_refused(tmp_path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[[backends]]\nname = "r"\nurl = "http://127.0.0.1:9"\n')
    with pytest.raises(ConfigError, match="needs exactly one in-process engine backend"):
        config_for("--config", str(path), "--kv-events-publish", "ipc:///tmp/x")


def test_topology_needs_one_engine_backend_too(tmp_path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[[backends]]\nname = "r"\nurl = "http://127.0.0.1:9"\n')
    with pytest.raises(ConfigError, match="--topology needs exactly one in-process engine"):
        config_for("--config", str(path), "--topology", "tetriinfer")
