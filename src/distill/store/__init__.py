"""Everything distill records, and the only package that writes SQL: the trace store (schema,
traces), what running services write beside it (segments), the trace lake (lake), the corpus
tables (chunks), the DuckDB plumbing they share (db), and users' ratings (feedback).
Query the files yourself with `distill sql` or any DuckDB client: docs/traces.md.
"""
