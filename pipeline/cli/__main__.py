"""``python -m pipeline.cli``: the ``pagerag`` command."""

from pipeline.cli import main

main()
