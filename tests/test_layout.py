"""The package's shape: imports point one way, no cycles, small functions, one MLflow contract.

Read from the source with ``ast`` (nothing is imported), so imports inside functions and
the subcommand modules ``cli`` loads by name count as much as module-level imports.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "av1_ablation"
CONTRACT = "av1_ablation.record.contract"
# Data flows down this list and so do the imports: a module imports its own top-level
# package or one of an earlier rank. The comparison reads what training wrote through
# `record` alone, never through training's modules.
RANKS = {
    "av1_ablation": 0, "av1_ablation.errors": 0,
    "av1_ablation.dataset": 1,
    "av1_ablation.models": 2, "av1_ablation.losses": 2, "av1_ablation.record": 2,
    "av1_ablation.training": 3,
    "av1_ablation.comparison": 4,
    "av1_ablation.cli": 5,
    "av1_ablation.__main__": 6,
}
MAX_TOP_LEVEL = 8  # entries of av1_ablation/ besides __init__.py and __main__.py
MAX_CODE_LINES = 59  # per function, docstring, blank and comment lines aside
MAX_PARAMETERS = 8  # per function on the training path
TRAINING_PATH = ("av1_ablation.training", "av1_ablation.models", "av1_ablation.losses",
                 "av1_ablation.record")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


def imports_of(name: str) -> set[str]:
    """Modules of the package that ``name`` imports, anywhere in its source: ``from X import y``
    counts as X.y when that is a module, and a string naming a module (``cli``'s subcommand
    table, fed to ``importlib``) counts as an import of it."""
    is_package = MODULES[name].name == "__init__.py"
    found = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in MODULES:
            found.add(node.value)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def top_package(name: str) -> str:
    return ".".join(name.split(".")[:2])


def test_the_import_graph_is_read():
    assert "av1_ablation.training.stage2" in GRAPH["av1_ablation.cli"]  # by name, for importlib
    assert "av1_ablation.training.loop" in GRAPH["av1_ablation.training.stage2"]
    assert "av1_ablation.record.contract" in GRAPH["av1_ablation.comparison.runs"]


def test_no_import_cycles():
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_point_one_way():
    wrong = []
    for name, imported in GRAPH.items():
        for other in imported:
            same = top_package(name) == top_package(other)
            if not same and RANKS[top_package(other)] >= RANKS[top_package(name)]:
                wrong.append(f"{name} -> {other}")
    assert not wrong, "imports against the data flow: " + ", ".join(sorted(wrong))


def test_the_comparison_reads_runs_through_the_record_only():
    into_training = sorted(f"{name} -> {other}" for name, imported in GRAPH.items()
                           if name.startswith("av1_ablation.comparison")
                           for other in imported if other.startswith("av1_ablation.training"))
    assert not into_training, into_training


def test_top_level_stays_small():
    entries = sorted(p.name for p in PACKAGE.iterdir()
                     if p.name not in ("__init__.py", "__main__.py", "__pycache__")
                     and not p.name.startswith("."))
    assert len(entries) <= MAX_TOP_LEVEL, entries
    # every subpackage is a package, so nothing sits there by accident
    assert all((PACKAGE / e / "__init__.py").is_file() for e in entries if (PACKAGE / e).is_dir())


def functions():
    for name, tree in TREES.items():
        lines = MODULES[name].read_text().splitlines()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield name, node, lines


def code_lines(node, lines: list[str]) -> int:
    body = node.body
    doc = set()
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        doc = set(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(1 for i in range(node.lineno, node.end_lineno + 1)
               if i not in doc and lines[i - 1].strip() and not lines[i - 1].strip().startswith("#"))


def test_functions_are_short():
    long = [f"{name}.{node.name} ({n} lines)" for name, node, lines in functions()
            if (n := code_lines(node, lines)) > MAX_CODE_LINES]
    assert not long, long


def test_training_path_functions_take_few_parameters():
    many = []
    for name, node, _ in functions():
        if not name.startswith(TRAINING_PATH):
            continue
        a = node.args
        params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, [a.vararg, a.kwarg])]
        if params and params[0].arg in ("self", "cls"):
            params = params[1:]
        if len(params) > MAX_PARAMETERS:
            many.append(f"{name}.{node.name} ({len(params)})")
    assert not many, many


# --------------------------------------------------------------------------- the MLflow contract
def contract_strings() -> set[str]:
    """Every name the contract defines: its module-level strings and tuples of strings."""
    from av1_ablation.record import contract

    defined = {t.id for node in TREES[CONTRACT].body if isinstance(node, ast.Assign)
               for target in node.targets for t in ast.walk(target) if isinstance(t, ast.Name)}
    values = set()
    for key in defined:
        value = getattr(contract, key)
        values.update([value] if isinstance(value, str) else
                      [v for v in value if isinstance(v, str)] if isinstance(value, tuple) else [])
    return values


# Contract names that are also ordinary words of the code (loss and metric words in labels,
# config field names, command names, data-store fields); the patterns below still catch
# them where they are composed into a name.
ORDINARY_WORDS = {"loss", "f1", "precision", "recall", "accuracy", "n", "loss_type", "seed", "losses",
                  "seeds", "jobs", "models", "qindex", "predictions", "stage1", "stage2", "ablation",
                  "reference", "references", "compare", "finetune", "train_", "val_",
                  "test_", "best_val_", "cfg.", "stage1=auto"}
# Composed names: tags in our namespace, MLflow's own tags, cfg.* params, run names,
# metric keys after a split prefix, artifact paths.
COMPOSED = re.compile(r"\bav1\.[a-z]|mlflow\.(parentRunId|experimentKind)|\bcfg\.[a-z*]|^-seed"
                      r"|^(val|test|best_val)_[a-z]|^train_(loss|seconds|blocks)|^(checkpoint|predictions)/"
                      r"|^figures/(confusion|per_qp|learning)|^metrics\.json$")
# File stems of the compare output's figures (figures/macro_f1.png), not MLflow names.
ALLOWED = {("av1_ablation.comparison.figures", "macro_f1"),
           ("av1_ablation.comparison.figures", "val_learning_curves")}
# Validators name the argument they check ("y_true must be 1-D"): not a column name.
VALIDATORS = {"check_labels", "check_pair", "_as_labels", "_as_scores"}


def literals(tree: ast.AST):
    """String constants of a module but its docstrings and the names given to validators."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(node.body[0].value, ast.Constant):
            skip.add(id(node.body[0].value))
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in VALIDATORS:
            skip.update(id(a) for a in node.args)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node


def test_mlflow_names_are_spelled_only_in_the_contract():
    names = contract_strings() - ORDINARY_WORDS
    assert {"av1.kind", "val_macro_f1", "checkpoint/model.pt", "y_true"} <= names
    found = []
    for module, tree in TREES.items():
        if module == CONTRACT:
            continue
        for node in literals(tree):
            if (module, node.value) in ALLOWED:
                continue
            if node.value in names or COMPOSED.search(node.value):
                found.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}")
    assert not found, "MLflow names outside record/contract.py:\n" + "\n".join(found)


def test_run_kinds_are_never_literals():
    """Tracked runs and run searches take their kind from the contract's constants."""
    found = []
    for module, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("tracked_run", "finished_runs"):
                kinds = [kw.value for kw in node.keywords if kw.arg == "kind"] + node.args[:1]
                found += [f"{MODULES[module].name}:{k.lineno}" for k in kinds if isinstance(k, ast.Constant)]
    assert not found, found


@pytest.mark.parametrize("name", ["poly", 42])
def test_run_names_come_from_the_contract(name):
    from av1_ablation.record import contract

    assert contract.arm_run_name(name, 7) == f"{name}-seed7"
    assert contract.parse_per_qp(contract.TEST + contract.per_qp(128, contract.MACRO_F1),
                                 contract.TEST) == (128, contract.MACRO_F1)
    assert contract.parse_per_qp(contract.TEST_MACRO_F1, contract.TEST) is None


def test_the_readme_layout_table_names_every_module():
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme[readme.index("## Layout"):]
    section = section[:section.index("\n## ", 1)]
    rows = dict(re.findall(r"^\| `av1_ablation/([\w./]*)` \| (.*) \|$", section, flags=re.MULTILINE))
    top = {p.name + ("/" if p.is_dir() else "") for p in PACKAGE.iterdir()
           if p.name not in ("__init__.py", "__main__.py", "__pycache__")}
    assert set(rows) == top
    for entry, concern in rows.items():
        if entry.endswith("/"):
            listed = set(re.findall(r"`(\w+)\.py`", concern))
            modules = {p.stem for p in (PACKAGE / entry).glob("*.py") if p.name != "__init__.py"}
            assert listed == modules, f"{entry}: not in the table {modules - listed}, gone {listed - modules}"
