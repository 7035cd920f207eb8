"""What running processes write instead of holding the trace store: trace segments (JSON lines a
service appends, folded into the store by the next command that opens it) and feedback
journals (ratings any process appends and every running router reads).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Sequence

from distill.store.db import connect
from distill.store.schema import RATED_TRACE_COLUMNS, current_fields

SEGMENTS = "segments"


ABANDONED_AFTER_S = 3600  # an open segment of another machine untouched this long belongs to a dead process


def segment_folder(traces_db: Path) -> Path:
    """Where services write their segments: `traces/segments/` beside `traces/traces.duckdb`."""
    return Path(traces_db).parent / SEGMENTS


def has_traces(traces_db: Path) -> bool:
    """Whether there is a trace store to open: the file, or segments a service or a `TraceLogger`
    wrote that the first open will fold into a new one."""
    folder = segment_folder(traces_db)
    return Path(traces_db).exists() or (folder.is_dir() and any(folder.iterdir()))


class SegmentLog:
    """The records a long-running process (a service's router) writes, without opening the store.

    DuckDB lets one process write a file at a time, so a service holding `traces.duckdb` would lock
    `collect`, `curate`, `nightly` and `sql` out. Each process instead appends JSON lines to a file
    of its own, `traces/segments/<host>-<pid>-<ns>.open`, flushed and fsynced before `write`
    returns: a crash loses only records not yet handed to `write`. Every `rotate_s` seconds (or
    `rotate_rows` records) the file is finished (renamed to `.jsonl`) and a new one begun. Whoever
    opens the trace store next folds the finished segments in (`TraceStore.fold_segments`), and
    those a process that died left open; traces are deduplicated by query_id, so nothing is counted
    twice.

        log = SegmentLog(Path("ws/traces/segments"))
        log.write([{"kind": "trace", "row": {...}}])     # durable when this returns
        log.close()                                       # finished: the next command folds it
    """

    def __init__(self, folder: Path, rotate_s: float = 5.0, rotate_rows: int = 10_000):
        self.folder, self.rotate_s, self.rotate_rows = Path(folder), rotate_s, rotate_rows
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file, self._path, self._rows, self._opened = None, None, 0, 0.0

    def write(self, records: Sequence[dict]) -> None:
        """Append records (`{"kind": "trace" | "shadow_check" | "withdrawal", "row": {...}}`) durably."""
        if not records:
            return
        lines = "".join(json.dumps(r, default=_iso) + "\n" for r in records)
        with self._lock:
            if self._file is None:
                self._path = self.folder / f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.open"
                self._file, self._rows, self._opened = self._path.open("a", encoding="utf-8"), 0, time.monotonic()
            self._file.write(lines)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._rows += len(records)
            if self._rows >= self.rotate_rows or time.monotonic() - self._opened >= self.rotate_s:
                self._finish()

    def finish_due(self) -> None:
        """Finish the open segment if it is older than `rotate_s` (the writer calls this when idle)."""
        with self._lock:
            if self._file is not None and time.monotonic() - self._opened >= self.rotate_s:
                self._finish()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._finish()

    def _finish(self) -> None:
        self._file.close()
        os.replace(self._path, self._path.with_suffix(".jsonl"))
        self._file = self._path = None


def _iso(value):
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def finished_segments(folder: Path) -> list[Path]:
    """The segments ready to fold, oldest first: finished ones, and open ones whose process is gone."""
    if not folder.is_dir():
        return []
    ready = [p for p in folder.glob("*.jsonl")] + [p for p in folder.glob("*.open") if _abandoned(p)]
    return sorted(ready, key=lambda p: p.stat().st_mtime)


def _abandoned(path: Path) -> bool:
    host, _, rest = path.stem.rpartition("-")[0].rpartition("-")
    pid = int(rest) if rest.isdigit() else -1
    if host == socket.gethostname() and pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return time.time() - path.stat().st_mtime > ABANDONED_AFTER_S


def find_trace(traces_db: Path, trace_id: str) -> dict | None:
    """One trace by id, wherever it is: the newest segments first (a service's answers of the last
    seconds are only there), then the store, read-only (None when neither has it). A store another
    command is writing is waited for a few seconds, then a DistillError says so."""
    needle = json.dumps({"trace_id": trace_id})[1:-1].encode()  # '"trace_id": "<id>"' as segments write it
    folder = segment_folder(traces_db)
    paths = list(folder.glob("*.open")) + sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime,
                                                 reverse=True) if folder.is_dir() else []
    for path in paths:
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # folded meanwhile: it is in the store now
            continue
        at = data.find(needle)
        if at >= 0:
            line = data[data.rfind(b"\n", 0, at) + 1:data.find(b"\n", at)]
            with contextlib.suppress(json.JSONDecodeError, KeyError):
                row = current_fields(json.loads(line)["row"])
                return {name: row.get(name) for name in RATED_TRACE_COLUMNS}
    if not Path(traces_db).exists():
        return None
    con = connect(Path(traces_db), read_only=True, wait_s=5.0)
    try:
        result = con.execute(f"SELECT {', '.join(RATED_TRACE_COLUMNS)} FROM traces WHERE trace_id = ?", [trace_id])
        names, row = [d[0] for d in result.description], result.fetchone()
    finally:
        con.close()
    return dict(zip(names, row)) if row else None


def read_segment(path: Path) -> list[dict]:
    """A segment's records, with today's field names; a last line cut short by a crash is skipped."""
    records = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records.append({**record, "row": current_fields(record["row"])} if "row" in record else record)
    return records


FEEDBACK = "feedback"


def feedback_folder(traces_db: Path) -> Path:
    """Where ratings are journaled: `traces/feedback/` beside `traces/traces.duckdb`."""
    return Path(traces_db).parent / FEEDBACK


def journal_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


def read_journal(path: Path, start: int = 0) -> tuple[list[dict], int]:
    """The ratings written to a journal after byte `start`, and the offset after the last whole
    line (a line a crash cut short is read once it is whole, or never)."""
    with path.open("rb") as journal:
        journal.seek(start)
        data = journal.read()
    end = data.rfind(b"\n") + 1
    ratings = []
    for line in data[:end].splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            ratings.append(current_fields(json.loads(line)))
    return ratings, start + end


class FeedbackJournal:
    """Ratings as JSON lines, one append-only file per process (`traces/feedback/<host>-<pid>-<ns>.jsonl`),
    fsynced before `append` returns. Unlike trace segments the files stay after they are folded
    into the store (`TraceStore.fold_feedback` remembers how far): every running router reads every
    journal's new lines (`read_new`) each `router.reload_s`, so a rating given to one worker takes
    effect in all of them without any of them opening the store.

        journal = FeedbackJournal(feedback_folder(workspace.traces_db))
        journal.append([rating])        # durable when this returns
        journal.read_new()              # every process's ratings this reader has not seen yet
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._path: Path | None = None
        self._offsets: dict[Path, int] = {}

    def append(self, ratings: Sequence[dict]) -> tuple[Path | None, int]:
        """Write ratings durably; returns this process's journal and its size after them."""
        if not ratings:
            return self._path, 0
        lines = "".join(json.dumps(r, default=_iso) + "\n" for r in ratings).encode()
        with self._lock:
            if self._path is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._path = self.folder / f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.jsonl"
            with self._path.open("ab") as journal:
                journal.write(lines)
                journal.flush()
                os.fsync(journal.fileno())
                return self._path, journal.tell()

    def read_new(self) -> list[dict]:
        """The ratings every journal gained since this reader last looked (all of them the first time)."""
        found = []
        with self._lock:
            for path in journal_files(self.folder):
                ratings, self._offsets[path] = read_journal(path, self._offsets.get(path, 0))
                found.extend(ratings)
        return found
