"""Applications as DAGs of LLM calls linked by semantic variables (Parrot's workload).

Parrot (Lin et al., "Parrot: Efficient Serving of LLM-based Applications with Semantic
Variable", OSDI'24) has applications submit their calls together, each call's prompt a template
whose input regions are variables that other calls' outputs fill. The service then sees the
dependencies: a call is ready when every variable it reads is produced.

Here an application is a `DagApp`: an id, a start time and its calls. A `DagCall` has a name,
its own prompt tokens (the template and any text the application supplies), its output tokens,
the variables it reads (`inputs`) and the variable it writes (`output`, optional). A call's
prompt is its own tokens plus the output tokens of every variable it reads. `dag_workload`
turns applications into the simulator's program workload: calls that read nothing arrive at
the application's start; a call that reads variables is released when the last of their
producers finishes, after `client_delay_s` (0: the service chains the calls itself, as
Parrot's does; a request-level API makes the client wait for each answer, parse it and send
the next request, which the delay stands for). Calls carry `program_id` = the application id.

File format (`load_dag_apps`): JSON Lines, one application per line:
`{"app_id": "doc7", "arrival_s": 0.5, "calls": [{"name": "map0", "prompt_tokens": 1024,
"output_tokens": 50, "output": "s0"}, ..., {"name": "reduce", "prompt_tokens": 64,
"output_tokens": 200, "inputs": ["s0", "s1"]}]}`. A cycle, a variable no call writes, a
variable written twice, a repeated call name or a bad field is a ConfigError naming the line,
the application and the call; nothing is simulated from a file with an error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shunter.core.types import RequestId, RequestSpec
from shunter.errors import ConfigError
from shunter.workload.program import FollowUp, ProgramWorkload

__all__ = ["DagApp", "DagCall", "chain_app", "dag_workload", "load_dag_apps", "map_reduce_app"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DagCall:
    name: str
    prompt_tokens: int  # its own: the template and text the application supplies
    output_tokens: int
    inputs: tuple[str, ...] = ()  # variables it reads (their values join its prompt)
    output: str | None = None  # the variable it writes


@dataclass(frozen=True, slots=True, kw_only=True)
class DagApp:
    app_id: str
    arrival_s: float
    calls: tuple[DagCall, ...]
    where: str = field(default="", compare=False)  # "FILE line N: " in errors

    def ordered(self) -> list[DagCall]:
        """The calls in a dependency order (producers first); ConfigError on a bad graph."""
        here = f"{self.where}application {self.app_id!r}"
        if not self.calls:
            raise ConfigError(f"{here}: no calls")
        names: set[str] = set()
        writer: dict[str, DagCall] = {}
        for call in self.calls:
            if call.name in names:
                raise ConfigError(f"{here}: two calls are named {call.name!r}")
            names.add(call.name)
            if call.output is not None:
                if call.output in writer:
                    raise ConfigError(f"{here}: variable {call.output!r} is written by both "
                                      f"{writer[call.output].name!r} and {call.name!r}")
                writer[call.output] = call
        for call in self.calls:
            for var in call.inputs:
                if var not in writer:
                    raise ConfigError(f"{here}: call {call.name!r} reads variable {var!r}, "
                                      f"which no call writes")
        done: list[DagCall] = []
        state: dict[str, int] = {}  # 1: on the current path, 2: placed

        def visit(call: DagCall, path: list[str]) -> None:
            if state.get(call.name) == 2:
                return
            if state.get(call.name) == 1:
                cycle = path[path.index(call.name):] + [call.name]
                raise ConfigError(f"{here}: a cycle: {' -> '.join(cycle)}")
            state[call.name] = 1
            for var in call.inputs:
                visit(writer[var], [*path, call.name])
            state[call.name] = 2
            done.append(call)

        for call in self.calls:
            visit(call, [])
        return done


def dag_workload(apps: Iterable[DagApp], *, client_delay_s: float = 0.0) -> ProgramWorkload:
    """The applications' calls as first calls and follow-ups (see the module docstring)."""
    if not (client_delay_s >= 0 and math.isfinite(client_delay_s)):
        raise ConfigError(f"client_delay_s must be a finite number >= 0, got {client_delay_s}")
    first_calls: list[RequestSpec] = []
    waiting: dict[RequestId, list[FollowUp]] = {}
    seen: set[str] = set()
    for app in apps:
        if app.app_id in seen:
            raise ConfigError(f"{app.where}application id {app.app_id!r} is used twice")
        seen.add(app.app_id)
        writer = {c.output: c for c in app.calls if c.output is not None}
        specs: dict[str, RequestSpec] = {}
        for call in app.ordered():
            producers = sorted({writer[var].name for var in call.inputs})
            prompt = call.prompt_tokens + sum(writer[var].output_tokens for var in call.inputs)
            spec = RequestSpec(request_id=f"{app.app_id}:{call.name}", arrival_s=app.arrival_s,
                               num_prompt_tokens=max(1, prompt),
                               num_output_tokens=call.output_tokens, program_id=app.app_id)
            specs[call.name] = spec
            if not producers:
                first_calls.append(spec)
                continue
            follow = FollowUp(spec, client_delay_s, len(producers))
            for name in producers:
                waiting.setdefault(specs[name].request_id, []).append(follow)
    first_calls.sort(key=lambda s: s.arrival_s)
    follow_ups = {rid: tuple(entry) if len(entry) > 1 else entry[0]
                  for rid, entry in waiting.items()}
    return ProgramWorkload(first_calls, follow_ups)


def _count(obj: dict[str, Any], key: str, where: str, *, minimum: int) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _name(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}{what} must be a non-empty string, got {value!r}")
    return value


def _call(obj: Any, where: str) -> DagCall:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}each call must be an object, got {obj!r}")
    unknown = set(obj) - {"name", "prompt_tokens", "output_tokens", "inputs", "output"}
    if unknown:
        raise ConfigError(f"{where}unknown call field(s) {sorted(unknown)}; valid: name, "
                          f"prompt_tokens, output_tokens, inputs, output")
    name = _name(obj.get("name"), "a call's name", where)
    where = f"{where}call {name!r}: "
    inputs = obj.get("inputs", [])
    if not isinstance(inputs, list):
        raise ConfigError(f"{where}inputs must be a list of variable names, got {inputs!r}")
    output = obj.get("output")
    return DagCall(name=name, prompt_tokens=_count(obj, "prompt_tokens", where, minimum=0),
                   output_tokens=_count(obj, "output_tokens", where, minimum=1),
                   inputs=tuple(_name(v, "each input", where) for v in inputs),
                   output=None if output is None else _name(output, "output", where))


def _app(obj: Any, where: str) -> DagApp:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}an application must be a JSON object")
    unknown = set(obj) - {"app_id", "arrival_s", "calls"}
    if unknown:
        raise ConfigError(f"{where}unknown field(s) {sorted(unknown)}; valid: app_id, "
                          f"arrival_s, calls")
    app_id = _name(obj.get("app_id"), "app_id", where)
    arrival = obj.get("arrival_s", 0.0)
    if isinstance(arrival, bool) or not isinstance(arrival, int | float) or not (
            math.isfinite(arrival) and arrival >= 0):
        raise ConfigError(f"{where}arrival_s must be a finite number >= 0, got {arrival!r}")
    calls = obj.get("calls")
    if not isinstance(calls, list) or not calls:
        raise ConfigError(f"{where}calls must be a non-empty list, got {calls!r}")
    app = DagApp(app_id=app_id, arrival_s=float(arrival), where=where,
                 calls=tuple(_call(c, f"{where}application {app_id!r}: ") for c in calls))
    app.ordered()  # cycles and unknown variables fail here, with the line
    return app


def load_dag_apps(path: str | Path) -> list[DagApp]:
    """Every application of a JSON Lines file, checked (ConfigError names the first bad line)."""
    apps: list[DagApp] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path} line {number}: "
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}not JSON ({e.msg})") from None
            apps.append(_app(obj, where))
    if not apps:
        raise ConfigError(f"{path}: no applications")
    ids = [a.app_id for a in apps]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"{path}: application id {dup!r} is used twice")
    return apps


def chain_app(app_id: str, arrival_s: float, chunk_tokens: Sequence[int], *,
              output_tokens: int, instruction_tokens: int = 32) -> DagApp:
    """Chain summarization: call k reads chunk k and the summary so far."""
    calls = [DagCall(name=f"step{k}", prompt_tokens=instruction_tokens + chunk,
                     output_tokens=output_tokens, output=f"summary{k}",
                     inputs=(f"summary{k - 1}",) if k else ())
             for k, chunk in enumerate(chunk_tokens)]
    return DagApp(app_id=app_id, arrival_s=arrival_s, calls=tuple(calls))


def map_reduce_app(app_id: str, arrival_s: float, chunk_tokens: Sequence[int], *,
                   map_output_tokens: int, reduce_output_tokens: int,
                   instruction_tokens: int = 32) -> DagApp:
    """Map-reduce summarization: one map call per chunk, one reduce reading every summary."""
    maps = [DagCall(name=f"map{k}", prompt_tokens=instruction_tokens + chunk,
                    output_tokens=map_output_tokens, output=f"part{k}")
            for k, chunk in enumerate(chunk_tokens)]
    reduce = DagCall(name="reduce", prompt_tokens=instruction_tokens,
                     output_tokens=reduce_output_tokens,
                     inputs=tuple(f"part{k}" for k in range(len(maps))))
    return DagApp(app_id=app_id, arrival_s=arrival_s, calls=(*maps, reduce))

