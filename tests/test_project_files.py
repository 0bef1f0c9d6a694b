"""The MLproject, the CLI and the environment files agree with each other."""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from av1_ablation import cli

REPO = Path(__file__).resolve().parents[1]


def mlproject():
    return yaml.safe_load((REPO / "MLproject").read_text())


def parse_command(sub: str, args: list[str]):
    """Parse ``av1-ablation <sub> <args>`` exactly as the command line does."""
    parser, _ = cli.build_parser([sub])
    return parser.parse_args([sub, *args])


@pytest.mark.parametrize("entry", sorted(mlproject()["entry_points"]))
def test_entry_point_parameters_reach_the_cli(entry):
    spec = mlproject()["entry_points"][entry]
    command = spec["command"]
    match = re.match(r"python -m av1_ablation (\w+) ", command)
    assert match, f"{entry} must call the av1-ablation command"
    sub = match.group(1)
    assert sub in cli.SUBCOMMANDS
    declared = set(spec.get("parameters", {}))
    used = set(re.findall(r"\{(\w+)\}", command))
    assert declared == used, f"{entry}: declared but unused {declared - used}, undeclared {used - declared}"
    # every flag of the command is an option of the subcommand, with the default values
    # (quoted as mlflow run quotes them)
    values = {k: shlex.quote(str(v.get("default", "")) if isinstance(v, dict) else "x")
              for k, v in spec.get("parameters", {}).items()}
    parse_command(sub, shlex.split(command.format(**values))[4:])


def test_main_and_train_are_the_same_entry_point():
    points = mlproject()["entry_points"]
    assert points["main"] == points["train"]


def test_python_env_matches_the_package_dependencies():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "python_env.yaml").read_text())["dependencies"]
    name = lambda d: re.split(r"[<>=!~ ]", d)[0].lower()  # noqa: E731
    assert {name(d) for d in deps} == {name(d) for d in env}
    assert "torch==2.13.0" in env  # the CPU wheel this machine serves
    conda_pip = yaml.safe_load((REPO / "conda.yaml").read_text())["dependencies"][-1]["pip"]
    assert {name(d) for d in deps} <= {name(d) for d in conda_pip}
