"""`python -m gradaudit` runs the command line."""

from gradaudit.launch import main

main()
