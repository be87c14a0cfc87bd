"""The compiled DiscoFLTask contract (ABI + bytecode), committed beside the package.

`contracts/compile.cjs` writes it from `contracts/DiscoFLTask.sol`; a test fails
when the two disagree.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def load_artifact() -> dict[str, Any]:
    text = resources.files("discofl_p2p.chain").joinpath("artifacts/DiscoFLTask.json").read_text()
    return json.loads(text)
