"""The background writer a long-running process logs through: a router's traces, shadow checks and
withdrawals go to its own segment (segments.py) from a thread, so a request never waits on a disk
and a service never holds `traces.duckdb`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from distill.store.schema import Trace
from distill.store.segments import SegmentLog, segment_folder
from distill.store.traces import TraceStore

logger = logging.getLogger(__name__)


def take_batch(source: queue.Queue, first, limit: int, wait_s: float) -> tuple[list, bool]:
    """`first` and whatever else arrives on `source` within `wait_s`, up to `limit` items; and
    whether the stop marker (None) arrived meanwhile (it is not in the batch)."""
    batch, deadline = [first], time.monotonic() + wait_s
    while len(batch) < limit and (left := deadline - time.monotonic()) > 0:
        try:
            item = source.get(timeout=left)
        except queue.Empty:
            break
        if item is None:
            return batch, True
        batch.append(item)
    return batch, False


class TraceWriter:
    """What a router logs (traces, shadow checks, withdrawn intents), written from a background
    thread in batches to this process's own segment of the trace store (`store.SegmentLog`), so a
    running service never locks `traces.duckdb` against collect, curate, nightly or sql; the next
    of those to open the store folds the segments in. `close` writes everything queued and finishes
    the segment.

        writer = TraceWriter(workspace.traces_db)
        writer.put("trace", trace)          # returns at once; durable within `wait_s`
        writer.close()
    """

    def __init__(self, traces_db: Path, batch: int = 256, wait_s: float = 0.2, rotate_s: float = 5.0):
        self.traces_db, self.batch, self.wait_s = Path(traces_db), batch, wait_s
        self.log = SegmentLog(segment_folder(self.traces_db), rotate_s=rotate_s)
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="distill-trace-writer", daemon=True)
        self._thread.start()

    def put(self, kind: str, row) -> None:
        """Queue a record: `kind` "trace" (a Trace), "shadow_check" or "withdrawal" (dicts)."""
        self._queue.put({"kind": kind, "row": dict(row.__dict__) if isinstance(row, Trace) else row})

    def withdrawn_intents(self, version: str) -> set[str]:
        """The intents of `version` withdrawn so far, from the store (folding the segments in)."""
        with TraceStore(self.traces_db) as store:
            return store.withdrawn_intents(version)

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.log.rotate_s)
            except queue.Empty:  # idle: finish the open segment so the next command folds it
                self.log.finish_due()
                continue
            if first is None:
                break
            records, stopping = take_batch(self._queue, first, self.batch, self.wait_s)
            try:
                self.log.write(records)
            except OSError:  # a full disk must not take the service down; the records are lost, said once
                logger.exception("could not write %d trace records to %s", len(records), self.log.folder)
            if stopping:
                break
        self.log.close()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
