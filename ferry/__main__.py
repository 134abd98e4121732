"""`python -m ferry` runs the ferry command."""

from ferry.cli import main

main()
