"""promtool (Debian's `prometheus` package; `.ci/run` installs it): the rules load, and their
unit tests (deploy/prometheus/alerts_test.yaml) prove the alerts fire, region-down first."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool is not installed (apt-get install prometheus)")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=RULES, capture_output=True, text=True, timeout=120, check=False)


@needs_promtool
def test_promtool_check_rules() -> None:
    out = _promtool("check", "rules", "alerts.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_promtool_unit_tests_fire_the_alerts() -> None:
    out = _promtool("test", "rules", "alerts_test.yaml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_unit_tests_expect_the_region_down_alert_to_fire() -> None:
    """promtool passes a test that expects nothing: check that one expects region-down firing."""
    tests = yaml.safe_load((RULES / "alerts_test.yaml").read_text())
    assert tests["rule_files"] == ["alerts.yaml"]
    firing = [case for test in tests["tests"] for case in test.get("alert_rule_test", ())
              if case["alertname"] == "InfercdnRegionDown" and case["exp_alerts"]]
    assert [a["exp_labels"]["region"] for case in firing for a in case["exp_alerts"]] == ["eu-west"]
