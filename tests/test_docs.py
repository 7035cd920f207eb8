"""The docs stay true to the code: generated pages are current, every trace column says what it
means, the README stays a front page, and no relative link is broken. No model is loaded."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from typing import Iterator

import duckdb

from distill.store.traces import TraceStore

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def _generator():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_pages_are_current(capsys):
    code = _generator().main(["--check"])
    assert code == 0, (f"{capsys.readouterr().err.strip()}\nA --help text, a setting or the trace schema changed: "
                       f"run `python scripts/gen_docs.py` (or `make docs`) and commit the pages it rewrites")


def test_check_names_each_stale_page_and_keeps_the_prose(tmp_path):
    gen = _generator()
    for name in gen.PAGES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    page = tmp_path / "docs" / "settings.md"
    text = page.read_text()
    page.write_text(text.replace("`corpus.chunk_words` | `", "`corpus.chunk_words` | `9"))
    assert gen.stale(tmp_path) == ["docs/settings.md"]
    rendered = gen.render(tmp_path)[page][1]
    assert rendered == text and rendered.startswith("# Settings")  # prose above the markers survives


def test_every_trace_column_and_table_has_a_comment(tmp_path):
    TraceStore(tmp_path / "traces.duckdb").close()
    con = duckdb.connect(str(tmp_path / "traces.duckdb"), read_only=True)
    try:
        bare = con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'traces' "
                           "AND coalesce(comment, '') = ''").fetchall()
        tables = con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' "
                             "AND coalesce(comment, '') = ''").fetchall()
    finally:
        con.close()
    assert not bare, f"traces columns without a meaning: {bare}; add COMMENT ON COLUMN in the migration that adds them"
    assert not tables, f"tables without a comment: {tables}"


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; move detail into docs/ (at most 160)"
    long = [n for n, line in enumerate(lines, 1) if len(line) > 120]
    assert not long, f"README.md lines over 120 characters: {long}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> Iterator[str]:
    seen: dict[str, int] = {}
    for line in FENCE.sub("", path.read_text()).splitlines():
        if match := re.match(r"#{1,6}\s+(.*)", line):
            slug = _slug(match.group(1))
            seen[slug] = seen.get(slug, -1) + 1
            yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


def test_relative_links_resolve():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text()))
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # http:, https:, mailto:
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in set(_anchors(path)):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
