"""The last head each session reconstructed, so that the expression sliders (`/expression`) can re-decode it.

A page's head goes when the page closes; an API caller's session never says it has gone, so at
most `capacity` sessions are kept, the least recently used going first. Only what a re-decode
needs is kept (the `Reconstruction` without its mesh, and its resolution): a few hundred kB each.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffnphr.pipeline import Reconstruction

NO_HEAD_YET = "Reconstruct a head first (Reconstruct tab); the expression sliders then change its expression."


@dataclass(frozen=True)
class KeptHead:
    """A session's last head (its mesh dropped) and the resolution it was extracted at."""

    head: Reconstruction
    resolution: int


class RecentHeads:
    """Session -> its last `KeptHead`, for at most `capacity` sessions (module docstring); thread-safe."""

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError(f"RecentHeads keeps at least one session, got capacity {capacity}")
        self.capacity = capacity
        self._heads: OrderedDict[str, KeptHead] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, session: str | None, head: Reconstruction, resolution: int) -> None:
        """Remember `head` as `session`'s last (a request without a session is not remembered)."""
        if session is None:
            return
        with self._lock:
            self._heads[session] = KeptHead(replace(head, mesh=None), int(resolution))
            self._heads.move_to_end(session)
            while len(self._heads) > self.capacity:
                self._heads.popitem(last=False)

    def last(self, session: str | None) -> KeptHead:
        """`session`'s last head, or a `ValueError` saying to reconstruct one first."""
        with self._lock:
            kept = self._heads.get(session) if session is not None else None
            if kept is None:
                raise ValueError(NO_HEAD_YET)
            self._heads.move_to_end(session)
            return kept

    def forget(self, session: str | None) -> None:
        """Drop `session`'s head (its page closed)."""
        with self._lock:
            self._heads.pop(session, None)
