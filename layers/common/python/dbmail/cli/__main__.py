"""``python -m dbmail.cli``."""

import sys

from dbmail.cli.commands import main

sys.exit(main())
