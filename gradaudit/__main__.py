"""`python -m gradaudit` runs the command line."""

from gradaudit.cli import main

main()
