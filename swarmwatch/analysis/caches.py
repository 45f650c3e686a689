"""The analysis answers a server keeps: one object its owner makes and passes to every read.

Nothing here is process-global. The API makes one AnalysisCaches per app; a CLI export,
a video or a test that passes none gets answers computed afresh from the rollups.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from swarmwatch.analysis.versioned import Activity, PerEngine, Refresher

if TYPE_CHECKING:
    from swarmwatch.analysis.frames import CompactFrames, Frame
    from swarmwatch.analysis.rankings import PublishedLevel
    from swarmwatch.store.keptframes import PersistedFrames

#: Published frames kept per engine (a frame at res 4 is ~10-400 KB of Python objects).
FRAME_CACHE_SIZE = 2_000
#: Compact answers kept per engine (each holds one body and its gzip, ~MBs at full scale).
COMPACT_CACHE_SIZE = 16


def _nothing() -> None:
    return None


@dataclass(eq=False)
class AnalysisCaches:
    """Cached answers by data version (see analysis.versioned), and what keeps them warm.

    settle: called after each background refresh and between warm-up frames. A server
    process passes gc.freeze there (its long-lived answers then stay out of full
    garbage collections, whose pauses stop every request); that is a decision about
    the whole process, so it is the process owner's (`swarmwatch serve`), not this
    library's. Default: nothing.
    """

    settle: Callable[[], None] = _nothing
    #: Analysis requests in flight, so background warm-ups step aside for them.
    activity: Activity = field(default_factory=Activity)
    refresher: Refresher = field(init=False)
    #: Published ranking levels by scope.
    levels: PerEngine[PublishedLevel] = field(init=False)
    #: Chao1 per scope (one read of the peer-times rollup, reused while the data holds).
    estimates: PerEngine[dict[str, Any] | None] = field(init=False)
    #: Seeds, leechers and unknown state per (titles, window): one read of their peers.
    seed_states: PerEngine[dict[str, tuple[int, int]]] = field(init=False)
    #: Published frames, each versioned by its own total (see analysis.frames).
    frames: PerEngine[Frame] = field(init=False)
    #: Compact time-lapses, versioned by the identity of the frames they encode;
    #: re-encoded in the background as soon as a frame changed (refresh_after 0).
    compact: PerEngine[CompactFrames] = field(init=False)
    #: One lock per time-lapse question: a request arriving while the same answer is
    #: being built (the start-up warm-up, or another request) waits for that build.
    building: weakref.WeakValueDictionary[Hashable, threading.Lock] = field(
        default_factory=weakref.WeakValueDictionary
    )
    building_lock: threading.Lock = field(default_factory=threading.Lock)
    #: Residents per H3 cell by (database URL, res, city count).
    cell_population: dict[tuple[str, int, int], dict[int, int]] = field(default_factory=dict)
    cell_lock: threading.Lock = field(default_factory=threading.Lock)
    #: Frames kept in the database across server starts (store.keptframes); None: a
    #: one-off reader (export, video, tests) that neither reads nor writes them.
    persisted: PersistedFrames | None = None

    def open(self) -> None:
        """Refresh in the background again (a server starting; see close())."""
        self.refresher.reopen()

    def close(self, timeout: float = 30.0) -> bool:
        """Stop refreshing in the background (before the engine goes): True if stopped."""
        return self.refresher.close(timeout)

    def __post_init__(self) -> None:
        self.refresher = Refresher(after=self.settle)
        self.levels = PerEngine(max_entries=64, refresher=self.refresher)
        self.estimates = PerEngine(max_entries=64, refresher=self.refresher)
        self.seed_states = PerEngine(max_entries=256, refresher=self.refresher)
        self.frames = PerEngine(max_entries=FRAME_CACHE_SIZE, refresher=self.refresher)
        self.compact = PerEngine(
            max_entries=COMPACT_CACHE_SIZE, refresh_after=0.0, refresher=self.refresher
        )


__all__ = ["COMPACT_CACHE_SIZE", "FRAME_CACHE_SIZE", "AnalysisCaches"]
