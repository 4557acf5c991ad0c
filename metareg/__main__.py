"""`python -m metareg` is the `metareg` command."""
from metareg.cli import main

main()
