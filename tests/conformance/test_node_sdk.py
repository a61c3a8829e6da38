"""The official npm `openai` SDK against the same gateway and mock as the Python
suite (node/sdk_check.mjs): chat, streams over three protocols, tools,
structured output, embeddings, models and the error classes; and Google's
npm `@google/genai` (node/genai_check.mjs, what the Gemini CLI is built on)
on Gemini's API served by three protocols. Needs Node.js 18+ and npm (the
packages are installed into node/node_modules on first run)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import MASTER_KEY

NODE_DIR = Path(__file__).parent / "node"


def node_major():
    if not shutil.which("node") or not shutil.which("npm"):
        return 0
    out = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    try:
        return int(out.lstrip("v").split(".")[0])
    except ValueError:
        return 0


pytestmark = pytest.mark.skipif(node_major() < 18, reason="Node.js 18+ and npm are needed")


@pytest.fixture(scope="module")
def node_sdk():
    installed = [NODE_DIR / "node_modules" / p / "package.json" for p in ("openai", "@google/genai")]
    if not all(p.exists() for p in installed):
        r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    return NODE_DIR


def test_node_sdk_quick_starts_and_errors(node_sdk, gateway, mock):
    r = subprocess.run(["node", "sdk_check.mjs"], cwd=node_sdk, capture_output=True, text=True, timeout=120,
                       env={"PATH": os.environ.get("PATH", ""), "POLYPLEX_BASE": gateway,
                            "POLYPLEX_KEY": MASTER_KEY, "MOCK_BASE": mock})
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout


def test_node_genai_sdk(node_sdk, gateway):
    r = subprocess.run(["node", "genai_check.mjs"], cwd=node_sdk, capture_output=True, text=True, timeout=120,
                       env={"PATH": os.environ.get("PATH", ""), "POLYPLEX_BASE": gateway, "POLYPLEX_KEY": MASTER_KEY})
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout
