"""distill: turn a RAG system's own traffic into a small, fast student, with RAG kept as the source of truth.

Stages, one module each: `corpus` (documents to chunks), `index` (hybrid retrieval), `teacher`
(cited RAG answers), `answerability` (does the evidence answer the question), `store` (the DuckDB
trace store, the only module that writes SQL), `collect` (batch traffic through the teacher into
traces), `external` (traces of a RAG system of your own: import, `TraceLogger`), `traffic`
(realistic query logs from QA sets), and onwards to `curate`, `train`, `router`.

    >>> from distill import TraceLogger   # two lines in your own RAG service's handler
"""

from distill.errors import DistillError

__all__ = ["DistillError", "TraceLogger"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "TraceLogger":  # imported on first use: `import distill` stays light
        from distill.external import TraceLogger

        return TraceLogger
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
