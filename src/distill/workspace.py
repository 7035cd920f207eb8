"""Where a distill deployment keeps its files: the workspace folder and the trace lake.

    workspace = Workspace.resolve()        # --home, else $DISTILL_HOME, else the current directory
    workspace.traces_db                    # <home>/traces/traces.duckdb
    workspace.config()                     # configs/default.toml, then <home>/distill.toml
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from distill.config import HOME_ENV, Config, load_config


@dataclass(frozen=True)
class LakeLocation:
    """Where a DuckLake trace catalog lives: `catalog` is its metadata database (a local
    `.ducklake` file, or `postgres:dbname=... host=...` for many writers), `data_path` the folder
    or object-store prefix (`s3://bucket/traces/`) that holds its Parquet files."""

    catalog: str
    data_path: str


@dataclass
class Workspace:
    """Where a distill deployment keeps its files: the trace store, the index and the models."""

    home: Path

    @classmethod
    def resolve(cls, home: Path | str | None = None) -> "Workspace":
        """`home` if given, else $DISTILL_HOME, else the current directory."""
        chosen = home or os.environ.get(HOME_ENV) or Path.cwd()
        return cls(Path(chosen).expanduser().resolve())

    @property
    def traces_db(self) -> Path:
        return self.home / "traces" / "traces.duckdb"

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def lake(self, config: Config) -> "LakeLocation":
        """The trace lake named by `config.lake`, relative paths taken from the workspace."""
        def place(value: str) -> str:
            return value if ":" in value else str(self.home / value)

        return LakeLocation(place(config.lake.catalog), place(config.lake.data_path))

    def config(self, overrides: dict | None = None) -> Config:
        return load_config(self.home, overrides)
