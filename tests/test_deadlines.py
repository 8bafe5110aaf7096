"""qproxy.tls.deadlines: many deadlines on one event-loop timer."""

from __future__ import annotations

import asyncio

import uvloop

from qproxy.tls import deadlines
from qproxy.tls.deadlines import Deadlines


class Target:
    def __init__(self, name: str, fired: list[tuple[str, float]]) -> None:
        self.name = name
        self.fired = fired

    def deadline_passed(self) -> None:
        self.fired.append((self.name, asyncio.get_running_loop().time()))


def test_deadlines_fire_in_order_no_earlier_than_due_and_removed_ones_never():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = Deadlines(loop, resolution=0.05)
        fired: list[tuple[str, float]] = []
        start = loop.time()
        late = Target("late", fired)
        wheel.add(0.4, late)
        early = Target("early", fired)
        wheel.add(0.1, early)  # earlier than the armed timer: re-armed
        gone = Target("gone", fired)
        key = wheel.add(0.2, gone)
        wheel.remove(key, gone)
        same = Target("same-bucket", fired)
        wheel.add(0.1, same)
        assert len(wheel) == 3
        await asyncio.sleep(0.8)
        names = [name for name, _ in fired]
        assert sorted(names[:2]) == ["early", "same-bucket"] and names[2:] == ["late"]
        due = {"early": 0.1, "same-bucket": 0.1, "late": 0.4}
        for name, when in fired:
            assert due[name] <= when - start < due[name] + 0.3
        assert len(wheel) == 0

    uvloop.run(main())


def test_a_deadline_added_while_firing_is_kept():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = Deadlines(loop, resolution=0.05)
        fired: list[tuple[str, float]] = []

        class Again(Target):
            def deadline_passed(self) -> None:
                super().deadline_passed()
                if len(self.fired) == 1:
                    wheel.add(0.1, self)

        wheel.add(0.05, Again("again", fired))
        await asyncio.sleep(0.6)
        assert [name for name, _ in fired] == ["again", "again"]

    uvloop.run(main())


def test_each_loop_has_its_own_deadlines_across_loops():
    """The last-loop shortcut in `for_running_loop` must not hand one loop's table to another."""
    async def table():
        return deadlines.for_running_loop()

    first_loop, second_loop = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        first = first_loop.run_until_complete(table())
        second = second_loop.run_until_complete(table())
        assert first is not second
        assert first_loop.run_until_complete(table()) is first
        assert second_loop.run_until_complete(table()) is second
    finally:
        first_loop.close()
        second_loop.close()
