"""`python -m discofl_p2p ...` is the `discofl-p2p` command."""

import sys

from discofl_p2p.commands.cli import main

sys.exit(main())
