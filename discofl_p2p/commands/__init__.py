"""Every `discofl-p2p` command, one module each; `cli.py` parses and dispatches.

| command                       | module        |
| ----------------------------- | ------------- |
| `discofl-p2p scenario FILE`   | `scenario.py` |
| `discofl-p2p node`            | `node.py`     |
| `discofl-p2p audit`           | `audit.py`    |
| `discofl-p2p demo`            | `demo.py`     |
| `discofl-p2p bench ...`       | `bench.py`    |

Commands are the edge: they read arguments, start what a run needs (anvil), print,
and choose the exit code. What they run lives in the packages beside this one.
"""
