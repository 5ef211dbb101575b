"""The code's shape: no import cycles among the harness, methods and analysis packages; the
harness never imports analysis; private Hydra and submitit APIs only in harness/internals.py,
each use of which works with the installed versions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("harness", "methods", "analysis")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (imports for annotations only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere (top level or inside a function)."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in mods:
                return ".".join(parts[:i])
        return None

    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names]
                names = [s for s in subs if s in mods] + ([base] if any(s not in mods for s in subs) else [])
            else:
                continue
            for name in names:
                target = resolve(name)
                # a module importing its own package (or a parent) is Python's import order, not a cycle
                if target and target != mod and not mod.startswith(target + "."):
                    graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_and_the_harness_never_imports_analysis():
    graph = import_graph()
    assert len(graph) > 80  # the walk found the packages
    assert not cycles(graph), cycles(graph)
    upward = sorted((m, d) for m, ds in graph.items() for d in ds if m.startswith("harness") and d.startswith("analysis"))
    assert not upward, upward


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


PRIVATE = re.compile(r"hydra\._internal|\._executor\b|from submitit\.\S+ import _\w+|\._trial_id\b")


def test_private_apis_only_in_the_adapter():
    users = sorted(str(p.relative_to(REPO)) for m, p in _modules().items() if PRIVATE.search(p.read_text()))
    assert users == ["harness/internals.py"], users


# -- each private use, against the installed Hydra and submitit --------------------------------
def test_the_config_loader_composes_a_multirun_config_with_its_hydra_node():
    from hydra.types import RunMode

    from harness.compose import CONF, register_configs
    from harness.internals import config_loader

    register_configs()
    cfg = config_loader(CONF).load_configuration("config", overrides=["seed=3", "method=bilevel"], run_mode=RunMode.MULTIRUN)
    assert cfg.seed == 3 and cfg.method.name == "bilevel" and cfg.hydra.sweeper is not None


def test_split_overrides_expands_sweeps_in_hydra_order():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from harness.internals import split_overrides

    parsed = OverridesParser.create().parse_overrides(["a=1,2", "b=x,y", "c=z"])
    assert split_overrides(parsed) == [["a=1", "b=x", "c=z"], ["a=1", "b=y", "c=z"], ["a=2", "b=x", "c=z"], ["a=2", "b=y", "c=z"]]


def test_a_registered_plugin_is_found_by_hydra():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    from harness.internals import register_plugin
    from harness.sweeper import HarnessSweeper

    cls = register_plugin("harness_sweeper", HarnessSweeper)
    assert cls.__module__ == "hydra_plugins.harness_sweeper" and issubclass(cls, HarnessSweeper)
    assert register_plugin("harness_sweeper", HarnessSweeper) is cls  # made once
    assert cls in Plugins.instance().discover(Sweeper)


def test_the_sbatch_script_of_an_array(tmp_path):
    import submitit

    from harness.internals import sbatch_script

    executor = submitit.AutoExecutor(folder=str(tmp_path), cluster="slurm")
    executor.update_parameters(slurm_partition="debug", timeout_min=5)
    script = sbatch_script(executor, "true", str(tmp_path), 3)
    assert "#SBATCH --array=0-2" in script and "#SBATCH --partition=debug" in script and "true" in script


def test_a_running_trial_is_reopened_by_its_handle():
    import optuna

    from harness.internals import running_trial

    study = optuna.create_study()
    first = study.ask()
    first.suggest_float("x", 0, 1)
    (frozen,) = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    again = running_trial(study, frozen)
    again.set_user_attr("resumed", True)
    study.tell(again, 0.5)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE and study.trials[0].user_attrs == {"resumed": True}


def _string_literals(tree: ast.AST):
    """(line, text) of every string constant that is not a docstring; f-strings' literal parts."""
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_harness_or_analysis_file_names_a_method():
    """A method is one file in methods/ (plus its config): the harness and analysis ask it what
    they need (Method's declarations) and never branch on, or build configs of, a method by name.
    `teacher` is also the model every method distils from, so only `method=teacher` counts."""
    from harness.method import eraser_keys, method_names

    names = [n for n in method_names() if n != "teacher"] + list(eraser_keys())
    assert {"distill", "bilevel", "two_stage", "esd"} <= set(names)
    pattern = re.compile(r"(^|[^\w.])(" + "|".join(map(re.escape, names)) + r")($|[^\w])|method=teacher\b")
    found = []
    for mod, path in _modules().items():
        if mod.split(".")[0] not in ("harness", "analysis"):
            continue
        for line, text in _string_literals(ast.parse(path.read_text())):
            if pattern.search(text):
                found.append(f"{path.relative_to(REPO)}:{line}: {text[:60]!r}")
    assert not found, "\n".join(found)


TOOLS = {  # every command-line tool but the Hydra app: argparse, --out-dir where it reads a run, --help
    "harness.jobs": "harness.jobs", "harness.backfill": "harness.backfill", "harness.bench": "harness.bench.__main__",
    "harness.bench.noise": "harness.bench.noise", "harness.bench.tune": "harness.bench.tune", "harness.bench.macs": "harness.bench.macs",
    "harness.bench.gpu_cell": "harness.bench.gpu_cell",
    "harness.metrics": "harness.metrics.__main__", "harness.metrics.prepare": "harness.metrics.prepare",
    "harness.world.build": "harness.world.build", "harness.export": "harness.export",
    "harness.robustness": "harness.robustness.__main__", "analysis.tables": "analysis.tables", "analysis.compare": "analysis.compare", "analysis.figures": "analysis.figures",
    "analysis.notebooks": "analysis.notebooks", "analysis.ui": "analysis.ui", "analysis.tune": "analysis.tune",
    "tests.cpu_profile": "tests.cpu_profile"}


def test_every_tool_speaks_argparse_with_help(capsys):
    """One CLI style: Hydra's key=value for runs (python -m harness), argparse for tools; a tool
    that reads a run's outputs takes --out-dir (never out_dir=)."""
    import importlib

    import pytest

    listed = {m for m, p in _modules().items() if p.name == "__main__.py" or "def main(" in p.read_text()}
    assert set(TOOLS.values()) | {"harness.__main__", "harness.app", "harness.tune.worker", "harness.distributed"} >= listed, listed
    for command, module in TOOLS.items():
        with pytest.raises(SystemExit) as exit_:
            importlib.import_module(module).main(["--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and out.startswith(f"usage: python -m {command}"), (command, out[:200])
        if command in READS_A_RUN:
            assert "--out-dir" in out, f"{command} reads a run's outputs but takes no --out-dir"


READS_A_RUN = ("harness.jobs", "harness.export", "harness.robustness", "harness.backfill", "analysis.tables", "analysis.compare", "analysis.figures", "analysis.notebooks",
               "analysis.ui", "analysis.tune")
