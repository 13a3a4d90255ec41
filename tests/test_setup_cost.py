"""helpers.setup_cost: installing a wheel is timed and its bytes on disk are counted."""

import zipfile

import pytest

from helpers import setup_cost


def tiny_wheel(folder):
    """A minimal valid wheel of one module, as pip installs it."""
    path = folder / "tinypkg-0.1-py3-none-any.whl"
    info = "tinypkg-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("tinypkg.py", "X = 1\n" + "# padding\n" * 1000)
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_install_cost_times_the_install_and_counts_what_it_wrote(tmp_path):
    cost = setup_cost.install_cost(tiny_wheel(tmp_path))
    assert cost["install_s"] > 0
    assert cost["installed_MB"] * 1e6 >= len("X = 1\n" + "# padding\n" * 1000)


def test_a_failing_pip_says_what_failed(tmp_path):
    with pytest.raises(RuntimeError, match="pip install failed"):
        setup_cost.install_cost(tmp_path / "missing-0.1-py3-none-any.whl")
