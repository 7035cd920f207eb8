"""Documents in, chunks out: loaders for the supported inputs and a structure-aware chunker.

A document has an id, a version (or an effective date), a source and optionally a scope (a tenant,
product or website). Chunking keeps a heading with the text under it and treats a list or numbered
procedure as one block that is never split, so a retrieved chunk carries a whole procedure:

    doc = Document("help/export", "# Export\\n\\n1. Open a note.\\n2. Click Export.", "help-center")
    [c.text for c in chunk_document(doc, chunk_words=50, injection_patterns=[])]

Every chunk knows its document id, version, scope and content hash; chunks whose text reads like
instructions to a model are flagged here, once, so no later stage shows them to a generator as such.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from distill.errors import DistillError

FORMATS = ("auto", "folder", "jsonl", "squad", "faq-versions")


@dataclass
class Document:
    doc_id: str
    text: str
    source: str
    version: int | None = None  # None: the next version if the text changed, else the stored one
    scope: str | None = None
    title: str | None = None
    effective_date: str | None = None

    @property
    def content_hash(self) -> str:
        return sha256(self.text)


@dataclass
class Chunk:
    chunk_id: str
    doc_id: str
    version: int
    scope: str | None
    source: str
    heading: str
    text: str
    position: int
    content_hash: str
    injection_flag: str | None


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def load_documents(path: Path, fmt: str = "auto", version: int | None = None) -> list[Document]:
    """Read documents from `path` in format `fmt` ('auto' guesses from the path)."""
    path = Path(path)
    if not path.exists():
        raise DistillError(f"{path} does not exist; pass a folder of .md/.txt files or a .jsonl/.json file")
    if fmt not in FORMATS:
        raise DistillError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = "folder" if path.is_dir() else {".jsonl": "jsonl", ".json": "squad"}.get(path.suffix, "")
        if not fmt:
            raise DistillError(f"cannot tell the format of {path}; pass --format ({', '.join(FORMATS[1:])})")
    if version is not None and fmt != "faq-versions":
        raise DistillError(f"--version applies to --format faq-versions only (got --format {fmt})")
    loader = {"folder": _load_folder, "jsonl": _load_jsonl, "squad": _load_squad,
              "faq-versions": lambda p: _load_faq_versions(p, version or 1)}[fmt]
    documents = list(loader(path))
    if not documents:
        raise DistillError(f"{path} holds no documents; check the path and --format")
    return documents


_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.S)
DOCUMENT_SUFFIXES = (".md", ".markdown", ".txt")
# Files with a document's suffix that are not documents: dependency lists and build or crawler
# configuration. Folders that hold build output, environments or tooling are not read either.
NOT_DOCUMENTS = ("requirements*.txt", "constraints*.txt", "dev-requirements*.txt", "CMakeLists.txt", "robots.txt",
                 "LICENSE*", "COPYING*")
SKIPPED_FOLDERS = ("_build", "_static", "_templates", "node_modules", "site-packages", "venv", "__pycache__")


def document_files(path: Path) -> list[Path]:
    """The files of a folder that `distill ingest` reads as documents: Markdown and text files,
    except dependency lists and the like (NOT_DOCUMENTS), and nothing under a hidden folder or a
    build, environment or tooling folder (SKIPPED_FOLDERS)."""
    found = []
    for file in sorted(path.rglob("*")):
        parts = file.relative_to(path).parts
        if file.suffix.lower() not in DOCUMENT_SUFFIXES or not file.is_file() or \
                any(p.startswith(".") or p in SKIPPED_FOLDERS for p in parts[:-1]) or \
                any(fnmatch.fnmatch(file.name, pattern) for pattern in NOT_DOCUMENTS):
            continue
        found.append(file)
    return found


def _load_folder(path: Path) -> Iterator[Document]:
    if not path.is_dir():
        raise DistillError(f"{path} is not a folder; use --format jsonl/squad/faq-versions for files")
    for file in document_files(path):
        text = file.read_text(encoding="utf-8", errors="replace")
        meta: dict[str, str] = {}
        if match := _FRONT_MATTER.match(text):
            for line in match.group(1).splitlines():
                key, _, value = line.partition(":")
                meta[key.strip()] = value.strip().strip("\"'")
            text = text[match.end():]
        heading = first_heading(text)
        try:
            doc_version = int(meta["version"]) if "version" in meta else None
        except ValueError:
            raise DistillError(f"{file}: front-matter version must be an integer, got {meta['version']!r}") from None
        yield Document(doc_id=meta.get("id", str(file.relative_to(path).with_suffix(""))), text=text,
                       source=meta.get("source", "local"), version=doc_version, scope=meta.get("scope"),
                       title=meta.get("title") or heading or file.stem,
                       effective_date=meta.get("effective_date"))


def _load_jsonl(path: Path) -> Iterator[Document]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DistillError(f"{path}:{number}: not valid JSON; fix or remove the line") from None
            missing = [k for k in ("id", "text", "source") if not isinstance(row, dict) or k not in row]
            if missing:
                raise DistillError(f"{path}:{number}: document lacks '{missing[0]}' (needs id, text, source)")
            try:
                doc_version = int(row["version"]) if row.get("version") is not None else None
            except (TypeError, ValueError):
                raise DistillError(f"{path}:{number}: 'version' must be an integer") from None
            yield Document(doc_id=str(row["id"]), text=str(row["text"]), source=str(row["source"]),
                           version=doc_version, scope=row.get("scope"), title=row.get("title"),
                           effective_date=row.get("effective_date"))


def _load_squad(path: Path) -> Iterator[Document]:
    """SQuAD v1.1 (PolicyQA): one document per paragraph, scoped by the article title (the website)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DistillError(f"{path} is not SQuAD-format JSON (expected {{'data': [{{'title', 'paragraphs'}}]}})") from None
    for article in data:
        for number, paragraph in enumerate(article["paragraphs"]):
            yield Document(doc_id=f"{article['title']}/{number:03d}", text=paragraph["context"], source="policyqa",
                           scope=article["title"], title=article["title"])


def _load_faq_versions(path: Path, version: int) -> Iterator[Document]:
    """The versioned COVID FAQ: one document per question, the answer as of `version`."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                versions = {v["version"]: v for v in row["versions"]}
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DistillError(f"{path}:{number}: not a faq-versions record (id, question, versions)") from None
            if version not in versions:
                raise DistillError(f"{path}:{number}: no version {version}; available: {sorted(versions)}")
            chosen = versions[version]
            question = re.sub(r"^Q:\s*", "", row["question"]).strip()
            yield Document(doc_id=row["id"], text=f"# {question}\n\n{chosen['answer']}", source=row["source"],
                           version=version, title=question, effective_date=chosen.get("scraped"))


def make_chunk_id(doc_id: str, version: int, position: int) -> str:
    """('billing/refunds', 2, 0) -> 'billing/refunds@v2#0'; `chunk_doc_version` reads it back."""
    return f"{doc_id}@v{version}#{position}"


def chunk_doc_version(chunk_id: str) -> tuple[str, int]:
    """'billing/refunds@v2#0' -> ('billing/refunds', 2): the document version a chunk belongs to."""
    doc_id, rest = chunk_id.rsplit("@v", 1)
    return doc_id, int(rest.split("#", 1)[0])


def cited_document(citations: list[str]) -> str | None:
    """The document an answer cites first: ['billing/refunds@v2#0', ...] -> 'billing/refunds' (None: no citation)."""
    return chunk_doc_version(citations[0])[0] if citations else None


def allowed(document: Document, allowed_sources: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(document.source, pattern) for pattern in allowed_sources)


# ---------------------------------------------------------------------------------------------
# Chunking
# ---------------------------------------------------------------------------------------------

_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
LIST_ITEM = re.compile(r"^\s*([-*+]|\d+[.)])\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,}|:{3,})\s*(\{[\w:-]+\}|[\w+#.-]*)")
_TARGET = re.compile(r"^\s*\([\w:.\-]+\)=\s*$")  # a MyST target: (label)=
_RST_TARGET = re.compile(r"^\s*\.\. _[\w\s:.\-]+:\s*$")  # a Sphinx target: .. _label:
_ROLE = re.compile(r"\{[\w:-]+\}`([^`]*)`")  # {ref}`text <target>` or {doc}`target`
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_DIRECTIVE_OPTION = re.compile(r"^\s*:[\w-]+:(\s.*)?$")
# MyST directives whose body is code, and those whose body is no text a reader sees.
CODE_DIRECTIVES = ("code-block", "code", "sourcecode", "code-cell")
HIDDEN_DIRECTIVES = ("toctree", "contents", "include", "literalinclude", "image", "figure", "raw", "eval-rst",
                     "autofunction", "automodule", "autoclass", "index", "cog")


def _role_text(match: re.Match) -> str:
    inner = match.group(1)
    if "<" in inner and inner.rstrip().endswith(">"):
        return inner[:inner.rindex("<")].strip()
    return inner.strip().lstrip("~!")


def clean_markdown(text: str) -> str:
    """Markdown as a reader sees it: MyST and Sphinx labels, HTML comments and directive markup
    gone, roles reduced to their text, admonitions kept as text, code directives as code fences.

        clean_markdown("(setup)=\\n# Setup\\n\\nSee {ref}`the options <opts>`.\\n\\n```{note}\\nIt is free.\\n```")
    """
    out: list[str] = []
    fence: tuple[str, str] | None = None  # (marker, kind): kind is 'code', 'hidden' or 'text'
    for line in _HTML_COMMENT.sub("", text).splitlines():
        match = FENCE.match(line)
        if fence is not None:
            marker, kind = fence
            if match and match.group(1)[0] == marker[0] and len(match.group(1)) >= len(marker) \
                    and not line.strip()[len(match.group(1)):].strip():
                fence = None
                if kind == "code":
                    out.append(line)
                continue
            if kind == "code":
                out.append(line)
            elif kind == "text" and not _DIRECTIVE_OPTION.match(line):
                out.append(_ROLE.sub(_role_text, line))
            continue
        if match:
            marker, info = match.group(1), match.group(2) or ""
            directive = info[1:-1].split(":")[-1] if info.startswith("{") else None
            if directive is None and marker[0] != ":":
                fence = (marker, "code")
                out.append(line)
            elif directive in CODE_DIRECTIVES:
                fence = (marker, "code")
                language = line.strip()[len(marker) + len(info):].strip().split(" ")[0]
                out.append(f"{marker}{language}")
            else:
                fence = (marker, "hidden" if directive in HIDDEN_DIRECTIVES else "text")
            continue
        if _TARGET.match(line) or _RST_TARGET.match(line):
            continue
        out.append(_ROLE.sub(_role_text, line))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def first_heading(text: str) -> str | None:
    """The text of the first top-level heading outside code, or None."""
    for level, block in markdown_blocks(clean_markdown(text)):
        if level == 1:
            return block
    return None


def is_code(block: str) -> bool:
    return bool(FENCE.match(block)) and block.lstrip()[:1] in "`~"


def markdown_blocks(text: str) -> Iterator[tuple[int, str]]:
    """Yield (level, heading) for headings and (0, text) for blocks. A fenced code block is one
    block, whatever it holds (a `# comment` in it is no heading); a list with its continuation
    lines (indented, or after a blank line inside the list) is one block."""
    current: list[str] = []
    in_list = False
    fence: str | None = None

    def flush():
        nonlocal current, in_list
        block = "\n".join(current).strip("\n")
        current, in_list = [], False
        return block if block.strip() else ""

    for line in text.splitlines():
        if fence is not None:
            current.append(line.rstrip())
            stripped = line.strip()
            if stripped.startswith(fence) and not stripped[len(fence):].strip():
                fence = None
                yield 0, flush()
            continue
        if (match := FENCE.match(line)) and match.group(1)[0] in "`~":
            if block := flush():
                yield 0, block
            fence = match.group(1)
            current.append(line.rstrip())
        elif match := _HEADING.match(line):
            if block := flush():
                yield 0, block
            yield len(match.group(1)), match.group(2).strip().rstrip("#").strip()
        elif not line.strip():
            if in_list:
                current.append("")
            elif block := flush():
                yield 0, block
        elif LIST_ITEM.match(line):
            if current and not in_list and (block := flush()):
                yield 0, block
            in_list = True
            current.append(line.rstrip())
        elif in_list and not line.startswith((" ", "\t")) and not current[-1]:
            if block := flush():
                yield 0, block
            current.append(line.rstrip())
        else:
            current.append(line.rstrip())
    if block := flush():
        yield 0, block


def _split_long(block: str, chunk_words: int) -> list[str]:
    """Split a long prose block at sentence ends; lists, procedures, tables and code are kept whole."""
    if LIST_ITEM.match(block) or is_code(block) or block.lstrip().startswith("|") or \
            len(block.split()) <= chunk_words:
        return [block]
    pieces, current = [], []
    for sentence in _SENTENCE_END.split(block):
        if current and len(" ".join(current + [sentence]).split()) > chunk_words:
            pieces.append(" ".join(current))
            current = []
        current.append(sentence)
    if current:
        pieces.append(" ".join(current))
    return pieces


def first_match(text: str, patterns: list[re.Pattern]) -> str | None:
    """The first phrase of `text` that one of `patterns` matches (an injection attempt, a high-risk
    topic: whatever the patterns are for), at most 80 characters, or None."""
    for pattern in patterns:
        if match := pattern.search(text):
            return match.group(0)[:80]
    return None


def compile_patterns(patterns: list[str], setting: str = "corpus.injection_patterns") -> list[re.Pattern]:
    try:
        return [re.compile(p, re.I | re.M) for p in patterns]
    except re.error as err:
        raise DistillError(f"setting '{setting}' has an invalid regex ({err})") from None


def chunk_injection(blocks: list[str], prose_patterns: list[re.Pattern],
                    code_patterns: list[re.Pattern]) -> str | None:
    """The injection-looking phrase of a chunk: prose is held to every pattern; a code example
    only to `code_patterns` (instructions in words), since role markers and chat-template tokens
    are what code about LLMs is made of (a YAML `system:` key, `<|im_start|>` in a template)."""
    prose = "\n\n".join(b for b in blocks if not is_code(b))
    code = "\n\n".join(b for b in blocks if is_code(b))
    return first_match(prose, prose_patterns) or (first_match(code, code_patterns) if code else None)


def chunk_document(doc: Document, chunk_words: int, injection_patterns: list[str] | list[re.Pattern],
                   code_injection_patterns: list[str] | list[re.Pattern] | None = None) -> list[Chunk]:
    """Cut `doc` into chunks of about `chunk_words` words along its structure.

    The text is read as Markdown (`clean_markdown`, then blocks). Each heading opens a section; a
    section's blocks are packed into chunks, and a short section (under 40 words) shares a chunk
    with the next one, its heading kept as a Markdown heading line of the text."""
    def compiled(patterns):
        return [p if isinstance(p, re.Pattern) else re.compile(p, re.I | re.M) for p in patterns]

    patterns = compiled(injection_patterns)
    code_patterns = patterns if code_injection_patterns is None else compiled(code_injection_patterns)
    title = doc.title or ""
    stack: list[tuple[int, str]] = []
    sections: list[tuple[str, int, list[str]]] = [(title, 1, [])]
    for level, text in markdown_blocks(clean_markdown(doc.text)):
        if level:
            stack = [(lvl, h) for lvl, h in stack if lvl < level] + [(level, text)]
            path = [h for _, h in stack if h != title]
            sections.append((" > ".join([title, *path] if title else path), level, []))
        else:
            sections[-1][2].extend(_split_long(text, chunk_words))

    pieces: list[tuple[str, list[str]]] = []
    for heading, level, blocks in sections:
        if not blocks:
            continue
        last = pieces[-1] if pieces else None
        if last and _words(last[1]) < 40 and _words(last[1]) + len(blocks[0].split()) <= chunk_words:
            last[1].append("#" * max(level, 2) + " " + heading.rsplit(" > ", 1)[-1])
        else:
            pieces.append((heading, []))
        for block in blocks:
            if pieces[-1][1] and _words(pieces[-1][1]) + len(block.split()) > chunk_words:
                pieces.append((heading, []))
            pieces[-1][1].append(block)
    return [
        Chunk(chunk_id=make_chunk_id(doc.doc_id, doc.version, n), doc_id=doc.doc_id, version=doc.version, scope=doc.scope,
              source=doc.source, heading=heading, text="\n\n".join(blocks), position=n,
              content_hash=sha256("\n\n".join(blocks)),
              injection_flag=chunk_injection([heading, *blocks], patterns, code_patterns))
        for n, (heading, blocks) in enumerate(pieces)
    ]


def _words(blocks: list[str]) -> int:
    return sum(len(b.split()) for b in blocks)
