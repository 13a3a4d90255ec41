"""helpers.colab: every badge and set-up cell agrees with the one address, one command rewrites them, and the
set-up cell itself works: run with a stand-in ``google.colab`` module, it clones the repository (from a local
``file://`` source here), and afterwards ``helpers`` imports from the clone and the pocket model loads."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import colab

ROOT = Path(__file__).resolve().parent.parent


def test_every_notebook_agrees_with_the_repository_address():
    assert colab.problems() == [], "run `python -m helpers.colab set-repo OWNER/NAME`"


def test_set_repo_rewrites_badges_and_set_up_cells(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb"))[:2]:
        shutil.copy(path, folder)
    module = tmp_path / "colab.py"
    module.write_text('REPO = "faster-gpt2/faster-gpt2"\n')
    assert colab.set_repo("someone/my-fork", folder=folder, module=module) == 2
    assert colab.problems("someone/my-fork", folder=folder) == []
    assert colab.problems(colab.REPO, folder=folder) != []  # the old address is gone everywhere
    assert module.read_text() == 'REPO = "someone/my-fork"\n'
    with pytest.raises(ValueError, match="OWNER/NAME"):
        colab.set_repo("not a repo", folder=folder, module=None)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_set_up_cell_clones_and_makes_helpers_importable(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("needs the repository's git history to clone from")
    cell = json.loads((ROOT / "notebooks" / "00_baseline.ipynb").read_text())["cells"][1]
    program = textwrap.dedent(
        """
        import sys, types
        sys.modules["google.colab"] = types.ModuleType("google.colab")  # what Colab has and nothing else does
        # Colab has no editable install of this repository: drop ours, so imports must come from the clone
        sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f)]
        sys.path = [p for p in sys.path if p != REPO_ROOT]
        """
    ).replace("REPO_ROOT", repr(str(ROOT)))
    program += "".join(cell["source"]) + textwrap.dedent(
        """

        import helpers
        from helpers import models
        model, tok = models.load("pocket", device="cpu", verbose=False)
        print("HELPERS_FROM", helpers.__file__)
        print("MODEL", model.config.n_layer, len(tok))
        """
    )
    env = {**os.environ, "WORKBOOK_CLONE_URL": ROOT.as_uri(), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    clone = (tmp_path / "faster-gpt2").resolve()
    assert f"HELPERS_FROM {clone}" in out.stdout
    assert "set-up done in" in out.stdout and "installed: nothing" in out.stdout
    assert "MODEL " in out.stdout
