"""DuckDB plumbing every store shares: opening a file (waiting while another process writes it),
one transaction per batch, and the migration runner (the simonw/llm pattern: an ordered list of
functions, each applied once and recorded in `_migrations`; a file from a newer distill is refused).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Sequence

import duckdb

from distill.errors import DistillError

Migration = Callable[[duckdb.DuckDBPyConnection], None]


WAIT_S = 60.0  # how long a command waits for another to finish writing the trace store (each holds it briefly)


def connect(path: Path, read_only: bool = False, wait_s: float = 0.0) -> duckdb.DuckDBPyConnection:
    """A connection; while another process writes the file (DuckDB lets one at a time), try again
    for up to `wait_s` seconds before saying so."""
    if read_only and not path.exists():
        raise DistillError(f"{path} does not exist; run the step that creates it first")
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as err:
            if "lock" not in str(err).lower():
                raise DistillError(f"{path} is not a readable DuckDB file ({first_line(err)}); move it aside and "
                                   f"rerun") from None
            if time.monotonic() >= deadline:
                raise DistillError(f"{path} is in use by another process{f' (waited {wait_s:.0f} s)' if wait_s else ''}; "
                                   f"wait for it to finish") from None
            time.sleep(0.2)
        except duckdb.Error as err:
            raise DistillError(f"{path} is not a readable DuckDB file ({first_line(err)}); move it aside and rerun") from None


def first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


@contextlib.contextmanager
def transaction(cur: duckdb.DuckDBPyConnection):
    """All of the block's writes or none: a crash or kill inside it leaves nothing half-written."""
    cur.execute("BEGIN TRANSACTION")
    try:
        yield
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise


def migrate(con: duckdb.DuckDBPyConnection, path: Path, migrations: Sequence[Migration]) -> None:
    con.execute("CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ)")
    applied = {row[0] for row in con.execute("SELECT name FROM _migrations").fetchall()}
    known = {m.__name__ for m in migrations}
    newer = sorted(applied - known)
    if newer:
        raise DistillError(
            f"{path} has schema migration '{newer[0]}' from a newer distill; upgrade distill to read it")
    for migration in migrations:
        if migration.__name__ in applied:
            continue
        with transaction(con):
            migration(con)
            con.execute("INSERT INTO _migrations VALUES (?, now())", [migration.__name__])


def extension_path(name: str) -> str:
    """The file of a DuckDB extension shipped as the PyPI package `duckdb-extension-<name>` (at
    duckdb's own version): `INSTALL` would download it, and this machine may have no internet."""
    import importlib

    package = f"duckdb_extension_{name}"
    try:
        module = importlib.import_module(package)
    except ImportError:
        module = None
    path = (Path(module.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
            if module else None)
    if path is None or not path.exists():
        raise DistillError(f"the DuckDB {name} extension for duckdb {duckdb.__version__} is not installed; "
                           f"pip install duckdb-extension-{name.replace('_', '-')}=={duckdb.__version__}")
    return str(path)


def as_dicts(result) -> list[dict]:
    """A query's rows as dicts by column name (none for a statement that returns no rows)."""
    if result.description is None:
        return []
    names = [d[0] for d in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]
