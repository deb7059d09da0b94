"""`python -m pytest_fuselab.cli`: the `fuselab` command."""

import sys

from pytest_fuselab.cli import main

sys.exit(main())
