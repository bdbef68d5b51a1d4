"""The ops stack's sandbox, as its own process: `python tests/ops/sandbox_main.py PORT CONFIG`.

`videobatch sandbox` has no flag for `shared_videos` (one render per size and length instead of
one per task), which is what makes thousands of videos cheap for the scale-out test; CONFIG is
the JSON of a `SandboxConfig` (faults included). The key is read from the environment
(SANDBOX_API_KEY), not the command line, so it shows in no process listing.
"""

from __future__ import annotations

import json
import os
import sys

from apimart.sandbox.config import SandboxConfig
from apimart.sandbox.server import serve


def main(argv: list[str]) -> None:
    port, config = int(argv[1]), json.loads(argv[2])
    config["api_key"] = os.environ["SANDBOX_API_KEY"]
    serve(SandboxConfig.from_mapping(config), host="127.0.0.1", port=port)


if __name__ == "__main__":
    main(sys.argv)
