"""`python -m gradaudit` runs the command line."""

from gradaudit.launch import console

console()
