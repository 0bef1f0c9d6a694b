"""The README's measured figures name the commit they were measured at, and the package
has not changed since: a code change cannot ship with stale results."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MEASURED_AT = re.compile(r"\bcommit ([0-9a-f]{7,40})\b")


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


def test_readme_figures_come_from_the_shipped_package():
    if _git("rev-parse", "--git-dir").returncode != 0:
        pytest.fail("the README check needs the project's git history (a clone, not an export)")
    commits = set(MEASURED_AT.findall((REPO / "README.md").read_text()))
    assert commits, "the README's measured figures must name the commit they were measured at"
    for commit in sorted(commits):
        known = _git("cat-file", "-e", f"{commit}^{{commit}}")
        assert known.returncode == 0, f"README names commit {commit}, which this clone does not have"
        diff = _git("diff", "--stat", commit, "HEAD", "--", "av1_ablation")
        assert diff.returncode == 0, diff.stderr
        assert not diff.stdout.strip(), (
            f"av1_ablation/ changed since commit {commit}, where the README's figures were measured; "
            f"re-run the scripts named beside them and update the README:\n{diff.stdout}")
