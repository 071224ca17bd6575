"""``mypy --strict`` (the settings of pyproject.toml's [tool.mypy]) over the packages whose
every seam is typed: the routing core, the composition root and the forwarding path.  What they import from
``gateway``/``worker`` is read for its types; those packages' own errors are not reported."""
from __future__ import annotations

from pathlib import Path

from mypy import api  # the test extra (make install-test)

ROOT = Path(__file__).resolve().parents[1]
STRICT = ("routing", "infercdn", "gateway/forward")


def test_strict_packages_type_check() -> None:
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--no-incremental",
                                "--no-error-summary", *(str(ROOT / p) for p in STRICT)])
    assert status == 0, f"mypy --strict on {', '.join(STRICT)}:\n{out}{err}"


def test_the_check_sees_an_error(tmp_path: Path) -> None:
    """The same call fails on a module that breaks a strict rule (no silently passing check)."""
    bad = tmp_path / "untyped.py"
    bad.write_text("def f(x):\n    return x\n")
    out, _, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--no-incremental", str(bad)])
    assert status == 1 and "no-untyped-def" in out
