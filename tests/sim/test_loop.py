from tests.factories import make_spec

from shunter.core.clock import ManualClock
from shunter.sim.loop import ARRIVAL_PRIORITY, STEP_DONE_PRIORITY, Arrival, EventLoop, StepDone


def test_events_pop_by_time_then_priority_then_insertion():
    clock = ManualClock()
    loop = EventLoop(clock)
    loop.push(2.0, ARRIVAL_PRIORITY, Arrival(make_spec("late")))
    loop.push(1.0, ARRIVAL_PRIORITY, Arrival(make_spec("a")))
    loop.push(1.0, STEP_DONE_PRIORITY, StepDone(0))
    loop.push(1.0, ARRIVAL_PRIORITY, Arrival(make_spec("b")))
    order = []
    while len(loop):
        ev = loop.pop()
        order.append((clock.now(), ev.replica_id if isinstance(ev, StepDone) else ev.spec.request_id))
    assert order == [(1.0, 0), (1.0, "a"), (1.0, "b"), (2.0, "late")]
