"""A node that was stalled answers nothing until control confirms it still owns its map.

Control declares a node down after `down_after_s` without a heartbeat, and an operator
may then repair its partitions onto other nodes. A node process that was paused that long
(SIGSTOP, a host suspended, an event loop blocked) does not know whether that happened: when it
runs again, the Puts that waited in it would commit on a copy that may no longer be the
partition's, and be acknowledged there; its Gets could answer from that stale copy.

So the node watches for its own stalls: a ticker notes every `tick_s` that the process
runs, on CLOCK_BOOTTIME (it runs on while the host is suspended, where monotonic stops),
and a gap of half `down_after_s` (or a read or write that finds the ticker that far
behind) fences it. A VM paused by its hypervisor shows as a gap only if the guest's
clocks jump when it resumes. Fenced, the node refuses reads, writes, Stats and the Sweep
stream with UNAVAILABLE (a write refused before it was queued was not applied; one that
committed while the fence closed is answered OWNERSHIP_UNCONFIRMED, which clients treat
as "may have applied") until control acknowledges a heartbeat sent after the stall at a
map version the node holds: by then any reassignment made meanwhile has reached it, and
its partitions are its own.

A node that is not stalled keeps serving while control is unreachable (no lease): a node
cut off from control by the network, while running, is not fenced. Repair only partitions
whose node is really gone, or stop it first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from keyspan.services.common.clock import running_clock
from keyspan.storage.errors import UnavailableError
from keyspan.streams.stopping import cancel_and_wait

log = logging.getLogger(__name__)
RETRY_AFTER_S = 0.5


class OwnershipFence:
    def __init__(self, node_id: str, clock: Callable[[], float] | None = None) -> None:
        clock = clock or running_clock
        self.node_id, self._clock = node_id, clock
        self.max_gap_s = 0.0  # 0: no stall detection (control did not say its down_after_s)
        self.tick_s = 0.1
        self.alive_at = clock()
        self.stall_s = 0.0  # the stall that closed the fence, for the messages
        self._confirm_from: int | None = None  # None: open; else the first heartbeat that may reopen it
        self._last_sent = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self._confirm_from is not None

    def configure(self, down_after_s: float) -> None:
        """From control's welcome: stalls of half its down_after_s close the fence."""
        self.max_gap_s = down_after_s / 2
        self.tick_s = max(0.01, min(0.25, self.max_gap_s / 5)) if down_after_s else 0.1

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick(), name="ownership-fence")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _tick(self) -> None:
        while True:
            self.note_alive()
            await asyncio.sleep(self.tick_s)

    def note_alive(self) -> None:
        now = self._clock()
        self._check_gap(now)
        self.alive_at = now

    def _check_gap(self, now: float) -> None:
        gap = now - self.alive_at
        if self.max_gap_s and gap > self.max_gap_s and not self.closed:
            self._confirm_from = self._last_sent + 1
            self.stall_s = gap
            # Counted: a call that finds it before the ticker does must not find it again
            # once control confirms. Only here: calls in a loop turn that runs long (many
            # short tasks) must not hide that the ticker, and the heartbeats, fell behind.
            self.alive_at = now
            log.warning(
                "this node was stalled: answering no read or write until control confirms its map",
                extra={"node_id": self.node_id, "stall_s": round(gap, 3)},
            )

    def sent(self, sequence: int) -> None:
        """A heartbeat numbered `sequence` went to control."""
        self._last_sent = sequence

    def acknowledged(self, sequence: int, control_version: int, held_version: int) -> None:
        """Control answered heartbeat `sequence` at map version `control_version`; the node
        holds `held_version`."""
        if (
            self._confirm_from is not None
            and sequence >= self._confirm_from
            and control_version <= held_version
        ):
            self._confirm_from = None
            log.info(
                "control confirmed this node's map after its stall: serving again",
                extra={"node_id": self.node_id, "map_version": held_version},
            )

    def check(self, committed: bool = False) -> None:
        """Raise UnavailableError while fenced. `committed`: asked after a write committed
        (its refusal then says it may have applied)."""
        self._check_gap(self._clock())
        if self._confirm_from is None:
            return
        why = (
            f"node {self.node_id} was stalled {self.stall_s:.1f} s and is confirming with control "
            "that it still owns its partitions"
        )
        if committed:
            raise UnavailableError(
                f"{why}: the write committed on this node's copy, which may no longer be the "
                "partition's; read the key again before retrying",
                RETRY_AFTER_S,
                may_have_applied=True,
                code="OWNERSHIP_UNCONFIRMED",
            )
        raise UnavailableError(f"{why}; retry", RETRY_AFTER_S)
