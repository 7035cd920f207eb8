"""The app every command registers on, the options and output they share, and `main`: one line
for a user's error (status 2) or a warning, and for a bug the file that holds its traceback.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from distill.errors import DistillError, DistillWarning

app = typer.Typer(help="distill: turn a RAG system's traffic into a small, fast student model.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


HOME_HELP = "workspace folder (traces/, index/, models/); default $DISTILL_HOME or the current directory"


def workspace_at(home: Optional[Path]):
    from distill.workspace import Workspace

    return Workspace.resolve(home)


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def answerability_line(row: dict) -> str:
    """What the teacher's refusal decision read: the score, the threshold and how it was set."""
    if row.get("answerability") is None:
        return "answerability: not scored (no evidence, or an imported trace)"
    held = row["answerability"] >= (row["answerability_threshold"] or 0.0)
    return (f"answerability {row['answerability']:.3f} {'>=' if held else '<'} threshold "
            f"{row['answerability_threshold']:.3f} ({row.get('answerability_method') or 'method not recorded'})")


SQL_FORMATS = ("table", "json", "csv", "line")


def print_rows(rows: list[dict], output: str = "table") -> None:
    """Rows as a rich table, JSON (a list of objects), CSV with a header, or DuckDB's line mode."""
    if output == "json":
        print(json.dumps(rows, indent=2, default=str))
    elif output == "csv":
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    elif output == "line":
        width = max((len(k) for k in (rows[0] if rows else {})), default=0)
        print("\n\n".join("\n".join(f"{k.rjust(width)} = {v}" for k, v in row.items()) for row in rows))
    else:
        from rich.console import Console

        from distill.jobs.quickstart import table

        Console().print(table(rows))


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A `DistillWarning` is printed as `warning: ...`, one line; other warnings as Python prints them."""
    if issubclass(category, DistillWarning):
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main() -> None:
    from distill.progress import quiet_library_bars

    warnings.showwarning = _one_line_warning
    quiet_library_bars()  # before transformers or datasets is imported: for cron, lines and no frames
    try:
        app()
    except DistillError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; committed traces are kept, rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # a bug: its traceback goes to a file, the screen gets where to find it
        log = _bug_report(err)
        print(f"error: distill hit a bug ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
              f"the traceback is in {log}; please report it with that file", file=sys.stderr)
        sys.exit(1)


def _bug_report(err: Exception) -> Path:
    """Write the traceback of an unexpected error to $DISTILL_CACHE_DIR/bugs/ (default
    ~/.cache/distill): a bug is shown as a bug, never as the user's error, and keeps its traceback."""
    import os
    import traceback
    from datetime import datetime

    folder = Path(os.environ.get("DISTILL_CACHE_DIR", Path.home() / ".cache" / "distill")) / "bugs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    path.write_text(f"distill {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(err)))
    return path
