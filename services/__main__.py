"""`python -m keyspan.services ...` is the `keyspan` command (used where no script is on PATH)."""

from keyspan.services.entry import main

main()
