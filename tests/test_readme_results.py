"""The measured figures of the README and docs/ name the commit they were measured at, and
neither the package nor the scripts that measure it have changed since: a code change cannot
ship with stale results."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MEASURED_AT = re.compile(r"\bcommit ([0-9a-f]{7,40})\b")
# what a figure depends on; all_figures.sh only runs the scripts in order, and its comments
# (how long each half takes) are not a reason to measure again
MEASURED_CODE = ["av1_ablation", "benchmarks", ":(exclude)benchmarks/all_figures.sh"]


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


def test_readme_figures_come_from_the_shipped_package():
    if _git("rev-parse", "--git-dir").returncode != 0:
        pytest.fail("the README check needs the project's git history (a clone, not an export)")
    named = {}  # commit -> the first document naming it
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for commit in MEASURED_AT.findall(doc.read_text()):
            named.setdefault(commit, doc.relative_to(REPO))
    assert any(str(doc) == "README.md" for doc in named.values()), (
        "the README's measured figures must name the commit they were measured at")
    for commit, doc in sorted(named.items()):
        known = _git("cat-file", "-e", f"{commit}^{{commit}}")
        assert known.returncode == 0, f"{doc} names commit {commit}, which this clone does not have"
        diff = _git("diff", "--stat", commit, "HEAD", "--", *MEASURED_CODE)
        assert diff.returncode == 0, diff.stderr
        assert not diff.stdout.strip(), (
            f"the measured code changed since commit {commit}, where figures of {doc} were measured; "
            f"re-run the scripts named beside them and update {doc}:\n{diff.stdout}")
