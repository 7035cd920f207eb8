"""distill: turn a RAG system's own traffic into a small, fast student, with RAG kept as the source of truth.

A package per stage of the data flow, bottom to top: `store` (everything recorded, the only
package that writes SQL), `llm` (local and HTTP models), `rag` (the teacher and the traces it
writes), `learn` (curation, training, the student and when it may answer), `serve` (the router and
its OpenAI-compatible app), `jobs` (eval, nightly, report, quickstart); docs/layout.md has the tree.

    from distill import TraceLogger   # two lines in your own RAG service's handler
"""

from distill.errors import DistillError

__all__ = ["DistillError", "TraceLogger"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "TraceLogger":  # imported on first use: `import distill` stays light
        from distill.rag.external import TraceLogger

        return TraceLogger
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
