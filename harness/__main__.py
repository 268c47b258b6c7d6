"""`python -m harness` is the `edgebench` command."""

from harness.cli import app

app(prog_name="edgebench")
