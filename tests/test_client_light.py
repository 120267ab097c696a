"""The client never imports torch: `cifarq --help` and `cifarq status` stay fast, and a client
install needs no torch."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

# Runs the CLI in-process with torch made unimportable, then reports what was imported.
PROBE = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("the client imported torch")
sys.meta_path.insert(0, NoTorch())
sys.argv = ["cifarq"] + sys.argv[1:]
from api_cli.main import main
try:
    main()
except SystemExit as exit:
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "numpy"))
    print("IMPORTED", heavy, "EXIT", exit.code, file=sys.stderr)
"""


def run_without_torch(env, *args):
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          env=env.vars, cwd=REPO, timeout=60)


def test_help_and_status_never_import_torch(sqlite_env):
    job_id = sqlite_env.submit_train("--epochs", "1")
    for args in (["--help"], ["submit", "train", "--help"], ["status", job_id], ["status", job_id, "--json"],
                 ["list"], ["submit", "train", "--epochs", "1"]):
        result = run_without_torch(sqlite_env, *args)
        assert "IMPORTED [] EXIT 0" in result.stderr, (args, result.stderr)


def test_the_probe_would_notice_torch(sqlite_env):
    # The same probe on a path that does import torch must fail: the guard is live.
    result = subprocess.run([sys.executable, "-c", PROBE.replace("from api_cli.main import main", "import torch"),
                             "--help"], capture_output=True, text=True, env=sqlite_env.vars, cwd=REPO)
    assert "the client imported torch" in result.stderr
