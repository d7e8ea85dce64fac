"""``python -m kdgen`` is the same as ``kdgen``."""

import sys

from kdgen.cli import main

sys.exit(main())
