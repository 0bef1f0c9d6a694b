"""The MLproject, the CLI and the environment files agree with each other, and the Makefile's
setup is redone when what it installed is gone."""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
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


# Options of every subcommand that are not MLproject parameters: help, and --debug, which
# changes only how a failure is printed (a terminal matter; `mlflow run` keeps the log).
NOT_PARAMETERS = {"help", "debug"}


def cli_options(sub: str) -> dict[str, argparse.Action]:
    """The options a user sets on ``av1-ablation <sub>``, by parameter name (``--cpu-used``
    is ``cpu_used``)."""
    parser, _ = cli.build_parser([sub])
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = {}
    for action in subparsers.choices[sub]._actions:
        if action.option_strings and action.dest not in NOT_PARAMETERS:
            flag = max(action.option_strings, key=len)
            options[flag[2:].replace("-", "_")] = action
    return options


def entry_command(entry: str) -> tuple[str, dict[str, str]]:
    """The subcommand an entry point runs and its ``--flag {param}`` pairs, by flag."""
    command = mlproject()["entry_points"][entry]["command"]
    sub = re.match(r"python -m av1_ablation (\w+)", command).group(1)
    pairs = dict(re.findall(r"--([\w-]+) \{(\w+)\}", command))
    return sub, pairs


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


@pytest.mark.parametrize("entry", sorted(mlproject()["entry_points"]))
def test_entry_point_parameters_are_exactly_the_cli_options(entry):
    """Both ways: every option a user sets on the subcommand is a parameter of the entry
    point, passed as ``--option {option}``, and every parameter is such an option."""
    sub, pairs = entry_command(entry)
    declared = set(mlproject()["entry_points"][entry].get("parameters", {}))
    options = cli_options(sub)
    assert set(options) == declared, (f"{entry}: CLI options not in MLproject {set(options) - declared}, "
                                      f"MLproject parameters not CLI options {declared - set(options)}")
    assert {flag.replace("-", "_"): param for flag, param in pairs.items()} == {p: p for p in declared}


@pytest.mark.parametrize("entry", sorted(mlproject()["entry_points"]))
def test_entry_point_defaults_are_the_cli_defaults(entry):
    """Where the CLI has a default of its own (not "the preset's value"), MLproject repeats it."""
    sub, _ = entry_command(entry)
    params = mlproject()["entry_points"][entry]["parameters"]
    for name, action in cli_options(sub).items():
        default = action.default
        if default is None or default == []:
            continue  # unset: MLproject passes "" (or the preset's value), which means the same
        expected = str(default).lower() if isinstance(default, bool) else str(default)
        assert str(params[name]["default"]) == expected, f"{entry}: {name}"


@pytest.mark.parametrize(("sub", "option"), [
    ("ablation", ["--seed", "1"]), ("ablation", ["--loss-type", "poly"]),  # it takes --seeds/--losses
    ("reference", ["--loss-type", "poly"]),  # every reference uses the baseline loss
    ("reference", ["--finetune", "true"]),  # only the finetune reference trains the backbone
])
def test_commands_refuse_options_they_do_not_use(sub, option, capsys):
    with pytest.raises(SystemExit):
        parse_command(sub, option)
    assert "unrecognized arguments" in capsys.readouterr().err


def test_flags_take_a_value_for_mlflow_run_and_none_on_the_command_line():
    assert parse_command("compare", ["--no-log"]).no_log is True
    assert parse_command("compare", ["--no-log", "false"]).no_log is False
    assert parse_command("compare", []).no_log is False
    assert parse_command("dataset", ["--overwrite", "--crop", ""]).overwrite is True
    assert parse_command("dataset", ["--crop", ""]).crop is None
    assert parse_command("compare", ["--ignore-param", "cfg.a,cfg.b", "--ignore-param", "cfg.c"]
                         ).ignore_param == ["cfg.a", "cfg.b", "cfg.c"]


def test_dataset_entry_point_writes_where_training_reads(tmp_path):
    """`mlflow run . -e dataset` with its defaults builds the store that training then reads,
    also when AV1_ABLATION_DATA moves it."""
    sub, pairs = entry_command("dataset")
    defaults = {k: v["default"] for k, v in mlproject()["entry_points"]["dataset"]["parameters"].items()}
    argv = [sub] + [part for flag, param in pairs.items() for part in (f"--{flag}", str(defaults[param]))]
    # training's data set when --data is not given: ensure_dataset(None), as load_split_data calls it
    probe = ("import sys; from av1_ablation import cli; from av1_ablation.dataset import ensure_dataset; "
             "args = cli.build_parser(sys.argv[1:])[0].parse_args(sys.argv[1:]); "
             "print(args.out); print(ensure_dataset(None))")
    for moved in (None, tmp_path / "elsewhere"):
        store = moved or tmp_path / "data" / "embedded"
        store.mkdir(parents=True)
        (store / "manifest.json").write_text("{}")  # a store is there: nothing is built
        env = {k: v for k, v in os.environ.items() if k != "AV1_ABLATION_DATA"}
        env.update({"AV1_ABLATION_DATA": str(moved)} if moved else {})
        done = subprocess.run([sys.executable, "-c", probe, *argv], env=env, cwd=tmp_path,
                              capture_output=True, text=True, check=True)
        out, read = done.stdout.split()
        assert (tmp_path / out).resolve() == (tmp_path / read).resolve() == store.resolve()


def _help_of(sub: str) -> dict[str, str]:
    """Each option's help text of ``av1-ablation <sub> --help``, by parameter name, on one line."""
    parser, _ = cli.build_parser([sub])
    formatter = parser._get_formatter()
    return {name: " ".join(formatter._expand_help(action).split())
            for name, action in cli_options(sub).items() if action.help}


@pytest.mark.parametrize("sub", ["train", "stage1", "ablation", "reference"])
def test_help_gives_each_training_option_its_choices_and_defaults(sub):
    from av1_ablation.losses import LOSS_TYPES
    from av1_ablation.record.contract import STAGE1_SCORE, STAGE2_SCORE
    from av1_ablation.training import config

    cls, presets = ((config.Stage1Config, config.STAGE1_PRESETS) if sub == "stage1"
                    else (config.Stage2Config, config.STAGE2_PRESETS))
    helps = _help_of(sub)
    assert helps["preset"].endswith("default: auto") and all(p in helps["preset"] for p in presets)
    for f in config.fields(cls):
        if f.name not in helps or f.name in ("preset", "data"):
            continue
        said = re.search(r"default: (.*)$", helps[f.name]).group(1)
        expected = {}
        for preset, values in presets.items():
            value = values.get(f.name, f.default)
            value = ",".join(value) if isinstance(value, tuple) else str(value)
            expected[preset] = value.lower() if isinstance(f.default, bool) else value
        if len(set(expected.values())) == 1:
            assert said == expected["paper"], (sub, f.name, said)
        else:
            assert said == "the preset's, " + ", ".join(f"{v} in {k}" for k, v in expected.items()), \
                (sub, f.name, said)
    choices = {"loss_type": LOSS_TYPES, "sampler": config.SAMPLERS, "qp_input": config.QP_INPUTS,
               "split_mode": config.SPLIT_MODES, "device": (*config.DEVICES, "cuda:N"),
               "adapter_layers": config.ADAPTABLE_LAYERS}
    for name, values in choices.items():
        if name in helps:
            assert f"of {', '.join(values)};" in helps[name], (sub, name)
    # early stopping watches the score the checkpoint is selected on, which differs by stage
    score = STAGE1_SCORE if sub == "stage1" else STAGE2_SCORE
    assert f"without a better {score} " in helps["patience"]
    assert "AV1_ABLATION_DATA" in helps["data"]


def test_compare_help_states_every_default():
    helps = _help_of("compare")
    for name, action in cli_options("compare").items():
        if action.default not in (None, [], False):
            assert f"default: {action.default}" in helps[name], name


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


# a goal that makes each stamp, and the stamp
STAMPS = {"setup": "build/.setup-stamp", "build/.ray-stamp": "build/.ray-stamp",
          "extended-packages": "build/.extended-stamp"}


def make_plan(checkout: Path, goal: str, python: str) -> str:
    """What ``make <goal>`` would run in ``checkout`` with every stamp up to date (``make -n``)."""
    later = (checkout / "pyproject.toml").stat().st_mtime + 60
    for stamp in STAMPS.values():
        (checkout / stamp).parent.mkdir(exist_ok=True)
        (checkout / stamp).touch()
        os.utime(checkout / stamp, (later, later))
    done = subprocess.run(["make", "-n", "-C", str(checkout), goal, f"PYTHON={python}"],
                          capture_output=True, text=True, check=True)
    return done.stdout


@pytest.fixture
def checkout_copy(tmp_path):
    """The Makefile and pyproject.toml in a folder of their own: a clone the installed package
    is not from."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def fake_python(folder: Path, rc: int) -> str:
    script = folder / f"python-exits-{rc}"
    script.write_text(f"#!/bin/sh\nexit {rc}\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("goal", list(STAMPS))
def test_a_stamp_whose_packages_are_gone_is_redone(checkout_copy, tmp_path_factory, goal):
    # an interpreter whose every check fails stands for a rebuilt environment without the packages
    plan = make_plan(checkout_copy, goal, fake_python(tmp_path_factory.mktemp("bin"), 1))
    assert "pip install" in plan, plan


@pytest.mark.parametrize("goal", ["setup", "build/.ray-stamp"])
def test_a_stamp_whose_packages_are_there_is_kept(checkout_copy, tmp_path_factory, goal):
    plan = make_plan(checkout_copy, goal, fake_python(tmp_path_factory.mktemp("bin"), 0))
    assert "pip install" not in plan, plan


def test_setup_is_redone_when_the_editable_install_is_another_clones(checkout_copy):
    # the real interpreter, whose av1_ablation is not the copy's: its code is not what the
    # Ray workers and the command would run, so setup installs this clone again
    assert "pip install -q -e" in make_plan(checkout_copy, "setup", sys.executable)
    # the same copy whose av1_ablation is a link to the installed one: nothing to redo. The
    # installed one is looked up with the working directory off sys.path, as make does (in this
    # process the checkout under test comes first, installed or not)
    installed = subprocess.run(
        [sys.executable, "-P", "-c", "import importlib.util as u; "
         "print(u.find_spec('av1_ablation').submodule_search_locations[0])"],
        cwd=checkout_copy, capture_output=True, text=True, check=True).stdout.strip()
    (checkout_copy / "av1_ablation").symlink_to(installed)
    assert "pip install" not in make_plan(checkout_copy, "setup", sys.executable)
