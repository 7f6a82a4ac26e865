"""``python -m modft_utils.serve``: the server (``modft serve``), with the same options."""

import sys

from modft_utils.serve.command import main

sys.exit(main())
