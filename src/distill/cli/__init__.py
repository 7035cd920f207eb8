"""The `distill` command line. It parses arguments and calls the stages, nothing more: one module
per part of the data flow (data: documents, traces and SQL; learn: curation, training, the
nightly and the models; run: asking, serving, evaluating), each registering its commands on
`base.app`. Heavy libraries are imported inside the commands that need them, so `distill --help`
is instant. A `DistillError` from any stage is printed as one line and exits with status 2;
anything else is a bug, printed as one line that names the file holding its traceback, status 1.
"""

from distill.cli import data, learn, run  # noqa: F401 (each registers its commands on `app`)
from distill.cli.base import app, main

__all__ = ["app", "main"]
