"""A snippet run in the peer libraries' virtual environment (``../shared/peers``).

The benchmarks that time archbench beside a peer library (pytorch-grad-cam, pykan) run
both in one process of that venv: ``bash ../shared/peers/setup.sh`` makes it, by default
in ``/tmp/peers-venv``. archbench comes from this checkout's ``src`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "peers"
DEFAULT_VENV = "/tmp/peers-venv"


def run_snippet(venv: str, code: str, args: list[Any], shim: bool = False) -> dict[str, Any]:
    """Run ``code`` with ``args`` in ``venv`` and return the JSON object its last output
    line prints; ``{"skipped": reason}`` when the venv is absent or the run fails.
    ``shim`` also puts the peers' torchvision shim on the path (pytorch-grad-cam needs it)."""
    python = Path(venv) / "bin" / "python"
    if not python.exists():
        return {"skipped": f"no peer venv at {venv} (run {PEERS / 'setup.sh'})"}
    paths = [ROOT / "src", *([PEERS / "shim"] if shim else [])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in paths))
    run = subprocess.run(
        [str(python), "-c", code, *map(str, args)], capture_output=True, text=True, env=env
    )
    if run.returncode:
        tail = run.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"skipped": f"peer run failed: {tail[0]}"}
    return json.loads(run.stdout.strip().splitlines()[-1])
