"""`python -m distill.cli`, as the `distill` command."""

from distill.cli import main

main()
