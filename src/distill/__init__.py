"""distill: turn a RAG system's own traffic into a small, fast student, with RAG kept as the source of truth.

Stages, one module each: `corpus` (documents to chunks), `index` (hybrid retrieval), `teacher`
(cited RAG answers), `store` (the DuckDB trace store, the only module that writes SQL), `collect`
(batch traffic through the teacher into traces), `traffic` (realistic query logs from QA sets).
"""

from distill.errors import DistillError

__all__ = ["DistillError"]
__version__ = "0.1.0"
