import sys

from metareg.cli import main

sys.exit(main())
