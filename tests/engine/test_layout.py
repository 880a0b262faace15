"""The engine's shape, checked on its source: stages are siblings that never import each other and write their runs
through one recorder in short functions, only artifact modules touch artifact files, the registry and the artifacts'
schemas load without torch, no module imports itself back, and the engine never imports the UI.
"""

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
import typing
from pathlib import Path

import vitsae_tui
from vitsae_tui.engine import stages
from vitsae_tui.engine.stages import REGISTRY

PACKAGE = Path(vitsae_tui.__file__).parent
ENGINE = PACKAGE / "engine"
STAGE_MODULES = sorted(stage.module for stage in REGISTRY.values())
SHARED_STAGE_MODULES = ("vitsae_tui.engine.stages.run",)
"""what the stages share: the run recorder"""
MAX_STAGE_FUNCTION_LINES = 60
RUN_WRITES = ("claim_run", "write_status", "append_jsonl", "truncate_jsonl", "stage_failed")
"""what a stage does only through its RunRecorder"""
ARTIFACT_MODULES = ("model_run", "activation_set", "saes/run", "feature_index")
# the files each artifact module owns, and ways of reading their contents by key
ARTIFACT_FILES = re.compile(r"\"(manifest|index|meta|concepts|labels|dataset)\.json\"|\"(trainer|best|last)\.pt\"")
RAW_KEY_ACCESS = re.compile(r"manifest\[\"|\.arrays\[\"|\bmeta\[\"|\[\"provenance\"\]")


def engine_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(ENGINE)], "vitsae_tui.engine."))


def imports_of(path: Path) -> set[str]:
    """Every vitsae_tui module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vitsae_tui"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("vitsae_tui"))
    return found


def source_files(exclude: tuple[str, ...]) -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if not any(part in exclude for part in p.relative_to(PACKAGE).parts)]


def test_every_registered_stage_has_a_module_with_run_and_a_config_with_field_docs():
    from vitsae_tui.engine.config import field_help

    package = sorted(f"vitsae_tui.engine.stages.{m.name}" for m in pkgutil.iter_modules(stages.__path__))
    assert package == sorted([*STAGE_MODULES, *SHARED_STAGE_MODULES])
    for stage in REGISTRY.values():
        assert callable(stage.run), stage.name
        assert all(field_help(stage.config).get(name) for name in stage.cli_fields), stage.name


def test_stages_never_import_each_other():
    for module in STAGE_MODULES:
        path = ENGINE / "stages" / f"{module.rsplit('.', 1)[1]}.py"
        others = {m for m in STAGE_MODULES if m != module}
        assert not imports_of(path) & others, f"{module} imports another stage"


def test_stages_write_their_runs_through_the_recorder_in_short_functions():
    """Claiming, status, metric rows and the failure sentence live in one place; a stage's own code is its loop."""
    for module in STAGE_MODULES:
        path = ENGINE / "stages" / f"{module.rsplit('.', 1)[1]}.py"
        tree = ast.parse(path.read_text())
        assert "vitsae_tui.engine.stages.run.recording" in imports_of(path), f"{module} does not use the recorder"
        for node in ast.walk(tree):
            name = getattr(node, "id", None) or getattr(node, "attr", None) or getattr(node, "name", None)
            if isinstance(node, ast.Name | ast.Attribute | ast.alias):
                assert name not in RUN_WRITES, f"{path}:{getattr(node, 'lineno', '')} uses {name}: use the RunRecorder"
            if isinstance(node, ast.FunctionDef):
                lines = node.end_lineno - node.lineno + 1
                assert lines <= MAX_STAGE_FUNCTION_LINES, f"{path}:{node.lineno} {node.name} is {lines} lines"


def _module_graph() -> dict[str, set[str]]:
    """Each vitsae_tui module and the vitsae_tui modules it imports (at the top or inside functions)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("vitsae_tui", *path.relative_to(PACKAGE).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        found = imports_of(path)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_module_imports_itself_back():
    """No import cycle, not even through a function-level import (errors.py once imported workspace, which imports
    errors, to write a failed run's status)."""
    graph = _module_graph()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join((*path[path.index(module) :], module)))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())


def _metric_key_reads(tree: ast.AST, keys: set[str]):
    """Where a catalogue key is spelled to read or build a dict: x["fvu"], x.get("fvu"), "fvu" in x, {"fvu": ...}."""
    for node in ast.walk(tree):
        spelled = []
        if isinstance(node, ast.Subscript):
            spelled = [node.slice]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop"):
            spelled = node.args[:1]
        elif isinstance(node, ast.Compare) and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
            spelled = [node.left]
        elif isinstance(node, ast.Dict):
            spelled = [k for k in node.keys if k is not None]
        for key in spelled:
            if isinstance(key, ast.Constant) and key.value in keys:
                yield node.lineno, key.value


def test_metric_keys_are_spelled_only_in_the_metrics_catalogue():
    """Rows are typed and metrics named once: no other file reads or builds a metric by its key's literal (the
    artifact modules, which own their files' schemas, aside)."""
    from vitsae_tui.engine.metrics import CATALOGUE

    keys = set(CATALOGUE) - {"step", "epoch", "lr", "dtype"}  # rows' indices, torch's param-group key, a config field
    artifact_files = {ENGINE / f"{name}.py" for name in ARTIFACT_MODULES}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == ENGINE / "metrics.py" or path in artifact_files or path.is_relative_to(ENGINE / "activation_set"):
            continue
        offenders += [
            f"{path.relative_to(PACKAGE)}:{line} {key!r}"
            for line, key in _metric_key_reads(ast.parse(path.read_text()), keys)
        ]
    assert not offenders, "metric keys spelled outside engine/metrics.py: " + ", ".join(offenders)


def test_artifact_modules_sit_below_the_stages_and_the_pipeline_above():
    for name in ARTIFACT_MODULES:
        path = ENGINE / f"{name}.py" if (ENGINE / f"{name}.py").exists() else ENGINE / name
        files = [path] if path.is_file() else list(path.rglob("*.py"))
        for file in files:
            assert not any(m.startswith("vitsae_tui.engine.stages") for m in imports_of(file)), file
            assert "vitsae_tui.engine.pipeline" not in imports_of(file), file
    for path in source_files(exclude=("tui",)):
        if path.name != "pipeline.py":
            assert "vitsae_tui.engine.pipeline" not in imports_of(path) or path.name == "cli.py", path


def test_only_artifact_modules_name_artifact_files_or_read_them_by_key():
    owners = {*ARTIFACT_MODULES, "stages"}  # a stage names the scratch files of its own run (e.g. trainer state)
    for path in source_files(exclude=("activation_set",)):
        stem = path.relative_to(PACKAGE).with_suffix("").parts
        if stem[0] == "engine" and ("/".join(stem[1:]) in owners or stem[1] == "stages"):
            continue
        text = path.read_text()
        assert not RAW_KEY_ACCESS.search(text), f"{path} reads an artifact by key"
        assert not ARTIFACT_FILES.search(text), f"{path} names an artifact's file: use its module"


def test_registry_and_artifact_schemas_import_without_torch():
    code = (
        "import sys\n"
        "import vitsae_tui.engine.stages, vitsae_tui.engine.pipeline, vitsae_tui.engine.model_run\n"
        "import vitsae_tui.engine.saes.run, vitsae_tui.engine.activation_set, vitsae_tui.engine.feature_index\n"
        "print('torch' in sys.modules)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_architectures_are_named_only_inside_their_package():
    """A new architecture touches engine/saes/ only: no other file compares, maps or spells an architecture's name."""
    from vitsae_tui.engine.saes import ARCHITECTURES, ArchName

    assert tuple(ARCHITECTURES) == typing.get_args(ArchName)
    for name, arch in ARCHITECTURES.items():
        assert arch.sae_class().arch == name
    for path in source_files(exclude=("saes",)):
        for node in ast.walk(ast.parse(path.read_text())):
            assert not (isinstance(node, ast.Constant) and node.value in ARCHITECTURES), f"{path}:{node.lineno}"
    assert not list(ENGINE.glob("sae_*.py")) and not (ENGINE / "sae.py").exists()


def test_engine_never_imports_the_ui():
    code = (
        "import sys, importlib\n"
        f"for m in {engine_modules()!r}: importlib.import_module(m)\n"
        "ui = ('textual', 'rich', 'rich_pixels', 'textual_plotext')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ui))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_run_kind_of_the_workspace_belongs_to_one_stage_whose_module_names_it():
    from vitsae_tui.engine.workspace import KINDS

    assert sorted(KINDS) == sorted({stage.kind for stage in REGISTRY.values()})
    for name, stage in REGISTRY.items():
        assert importlib.import_module(stage.module).STAGE == name, "a stage's events carry its registry name"
