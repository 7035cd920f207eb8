"""The trace lake: a DuckLake catalog of Parquet files partitioned by day and scope, which
`distill lake push` appends to and `distill curate --lake` reads with the same SQL as the file.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from distill.errors import DistillError
from distill.store.db import extension_path, first_line
from distill.store.schema import CURATION_INPUT, TRACE_COLUMNS
from distill.workspace import LakeLocation

# A lake row is a trace plus its partition key `day` (the UTC date it was asked).
LAKE_SELECT = ", ".join(TRACE_COLUMNS) + ", CAST(timezone('UTC', asked_at) AS DATE) AS day"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def attach_lake(cur: duckdb.DuckDBPyConnection, lake: LakeLocation) -> None:
    """Attach the catalog as `lake`. Rows are always written to Parquet (no inlining into the
    metadata database), so every trace lands in a `day=.../scope=.../` file that any Parquet
    reader can open."""
    cur.execute("SET enable_progress_bar = false")  # a long push or pull must not draw over the CLI's own progress
    cur.execute(f"LOAD '{extension_path('ducklake')}'")
    if "://" in lake.data_path:  # s3://, gs://, az://...: credentials come from a persistent DuckDB secret
        cur.execute(f"LOAD '{extension_path('httpfs')}'")
    else:
        Path(lake.data_path).mkdir(parents=True, exist_ok=True)
    if lake.catalog.startswith("postgres:"):
        cur.execute(f"LOAD '{extension_path('postgres_scanner')}'")
    elif ":" not in lake.catalog:
        Path(lake.catalog).parent.mkdir(parents=True, exist_ok=True)
    try:
        cur.execute(f"ATTACH {_literal('ducklake:' + lake.catalog)} AS lake "
                    f"(DATA_PATH {_literal(lake.data_path)}, DATA_INLINING_ROW_LIMIT 0)")  # ATTACH takes no parameters
    except duckdb.Error as err:
        raise DistillError(f"cannot open the trace lake {lake.catalog} ({first_line(err)}); "
                           f"check lake.catalog and lake.data_path") from None


class TraceLake:
    """Read side of the trace lake: curation's own SQL, run over the lake's Parquet files.

        with TraceLake(LakeLocation("lake/traces.ducklake", "lake/data")) as lake:
            rows = lake.curation_input()
    """

    def __init__(self, lake: LakeLocation):
        self.lake = lake
        self._con = duckdb.connect()
        try:
            attach_lake(self._con, lake)
            self._con.execute("USE lake")
            if not self._con.execute("SELECT count(*) FROM information_schema.tables WHERE table_catalog = 'lake' "
                                     "AND table_name = 'traces'").fetchone()[0]:
                raise DistillError(f"the trace lake {lake.catalog} holds no traces; run `distill lake push` first")
        except BaseException:
            self._con.close()
            raise

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "TraceLake":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def count(self) -> int:
        return self._con.execute("SELECT count(*) FROM traces").fetchone()[0]

    def partitions(self) -> list[dict]:
        """Rows per (day, scope) partition, as a person auditing the lake would ask for them."""
        result = self._con.execute("SELECT day, scope, count(*) AS traces FROM traces GROUP BY ALL ORDER BY ALL")
        return [dict(zip(("day", "scope", "traces"), row)) for row in result.fetchall()]

    def curation_input(self) -> list[dict]:
        result = self._con.execute(CURATION_INPUT)
        names = [d[0] for d in result.description]
        return [dict(zip(names, row)) for row in result.fetchall()]
