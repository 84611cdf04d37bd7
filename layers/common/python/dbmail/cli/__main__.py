"""``python -m dbmail.cli``."""

import sys

from dbmail.cli import main

sys.exit(main())
