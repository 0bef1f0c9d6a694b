"""The ``av1-ablation`` command. MLproject entry points call it too.

Each subcommand lives in its own module, which defines ``configure(parser)``
and ``run(args) -> int``. Modules are imported only when their subcommand is
chosen, so ``av1-ablation dataset --help`` does not pay for importing MLflow.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from av1_ablation.errors import Terminated, UserError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "dataset": ("av1_ablation.dataset.command", "build a labelled block store with aomenc + libaom"),
    "stage1": ("av1_ablation.stage1", "train the Stage-1 model (NONE vs partitioned)"),
    "train": ("av1_ablation.stage2", "train one Stage-2 loss arm (the main job)"),
    "ablation": ("av1_ablation.ablation", "train every loss x seed as child runs of one parent"),
    "reference": ("av1_ablation.reference", "train the reference models: prior, gbm, finetune"),
    "compare": ("av1_ablation.compare", "compare the loss arms: tables, statistics, verdict"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="av1-ablation",
        description="Stage-2 loss-function ablation for AV1 partition prediction.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = {}
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        # Import only the chosen subcommand's module (or all of them for --help).
        if chosen in (name, None) or chosen not in SUBCOMMANDS:
            modules[name] = importlib.import_module(module_name)
            modules[name].configure(sp)
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except UserError as exc:
        print(f"av1-ablation {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"av1-ablation {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"av1-ablation {args.command}: terminated", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
