"""Every JSON field of every artifact, damaged: `runs`, `inspect` and `feature` answer with a sentence (never a
traceback), the app opens home, every run and the browser without dying, and no other file is touched."""

import contextlib
import hashlib
import io
import json
import math
from pathlib import Path

import pytest
from textual.widgets import DataTable

from tests.helpers import make_indexed_workspace, wait_for
from vitsae_tui import cli
from vitsae_tui.engine.config import SAETrainConfig
from vitsae_tui.engine.feature_index import open_index_for
from vitsae_tui.engine.saes.run import write_config
from vitsae_tui.engine.workspace import append_jsonl
from vitsae_tui.tui.app import VitsaeApp

SWAPS = ("x", [], {}, None, True, 1e308, -1, 10**30, math.nan, math.inf, 0)
"""a field replaced by each in turn: type swaps, huge, negative, NaN and infinite numbers"""
DEEP = "[" * 200_000 + "]" * 200_000


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """An indexed workspace with every kind of JSON file: labels, an SAE config and a metrics log too."""
    ws, sae = make_indexed_workspace(tmp_path_factory.mktemp("fuzz") / "ws")
    open_index_for(ws, sae).set_label(0, "edge")
    sae_dir = ws.run_dir("saes", sae)
    write_config(sae_dir, SAETrainConfig(activations=json.loads((sae_dir / "meta.json").read_text())["activations"]))
    append_jsonl(sae_dir / "metrics.jsonl", {"kind": "step", "step": 1, "mse": 0.5, "fvu": 0.4, "l0": 12.0})
    return ws, sae


def json_files(root: Path) -> list[Path]:
    """Every JSON file the runs own (the synthetic data cache is the dataset's, not an artifact)."""
    return sorted(p for p in root.rglob("*.json") if p.relative_to(root).parts[0] != "data")


def field_paths(value, prefix=()):
    """Every key path of a JSON document; of a list, its first element stands for the rest."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from field_paths(item, (*prefix, key))
    elif isinstance(value, list) and value:
        yield from field_paths(value[0], (*prefix, 0))


def damaged_copy(doc, path, change):
    """A deep copy of doc with change(parent, key) applied at path."""
    copy = json.loads(json.dumps(doc))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    change(parent, path[-1])
    return json.dumps(copy)


def mutations(doc):
    """(description, damaged text) for every field: deleted, shortened when a list, and three rotating swaps."""
    for n, path in enumerate(field_paths(doc)):
        if not path:
            continue
        name = ".".join(map(str, path))
        yield f"{name} missing", damaged_copy(doc, path, lambda parent, key: parent.pop(key))
        for swap in (SWAPS[(n + k) % len(SWAPS)] for k in (0, 4, 8)):
            yield f"{name} = {swap!r}", damaged_copy(doc, path, lambda parent, key, v=swap: parent.__setitem__(key, v))
        value = doc
        for key in path:
            value = value[key]
        if isinstance(value, list) and value:
            yield f"{name} one short", damaged_copy(doc, path, lambda parent, key: parent[key].pop())


def whole_file_damage(text: str):
    yield "a list", "[]"
    yield "a string", '"oops"'
    yield "nested 200k deep", DEEP
    yield "truncated", text[: len(text) // 2]


def fingerprint(root: Path, skip: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and p != skip and p.name != "error.log" and not p.name.endswith(".tmp")
    }


def run_cli(root: Path, sae: str, damaged: Path) -> list[str]:
    """The read-only commands on a damaged workspace; what went wrong as readable lines (empty: all good)."""
    problems = []
    commands = [["runs"], ["inspect", "--sae", sae, "--image", "0", "--token", "3"], ["feature", "--sae", sae, "0"]]
    if damaged.parent.parent.name == "features":  # concepts opens the index as feature does, then reads concepts.json
        commands.append(["concepts", "--sae", sae])
    for argv in commands:
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(["--workspace", str(root), *argv])
        except Exception as e:  # noqa: BLE001 - any escape is the finding
            problems.append(f"{argv[0]}: {type(e).__name__}: {e}"[:300])
            continue
        lines = err.getvalue().strip().splitlines()
        if code not in (0, 1) or "internal error" in err.getvalue() or len(lines) > 1:
            problems.append(f"{argv[0]} exited {code}: {err.getvalue()[:300]}")
    return problems


@pytest.mark.slow
def test_the_cli_reads_every_damaged_field_of_every_artifact_without_a_traceback(fuzzed):
    ws, sae = fuzzed
    problems, cases = [], 0
    for path in json_files(ws.root):
        original = path.read_bytes()
        before = fingerprint(ws.root, path)
        text = original.decode()
        damage = [*mutations(json.loads(text)), *whole_file_damage(text)]
        try:
            for what, damaged in damage:
                path.write_text(damaged)
                cases += 1
                problems += [f"{path.relative_to(ws.root)} {what}: {p}" for p in run_cli(ws.root, sae, path)]
        finally:
            path.write_bytes(original)
        assert fingerprint(ws.root, path) == before, f"reading a damaged {path.name} changed other files"
    assert cases > 400
    assert not problems, "\n".join(problems[:20])
    assert not (ws.root / "error.log").exists()


async def walk_the_app(root: Path) -> None:
    """Home, enter on every run (and back), then the browser: the app must still be running and have logged no bug."""
    app = VitsaeApp(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: not app.is_running or app.screen.scans > 0, timeout_s=30)
        assert app.is_running
        rows = app.screen.query_one("#runs", DataTable).row_count
        for row in range(rows):
            app.screen.query_one("#runs", DataTable).move_cursor(row=row)
            await pilot.press("enter")
            await wait_for(pilot, lambda: not app.is_running or app.current_mode != "home", timeout_s=30)
            assert app.is_running
            await pilot.pause(0.05)
            await app.switch_mode("home")
        await pilot.press("b")
        await wait_for(pilot, lambda: app.current_mode == "browse", timeout_s=30)
        await pilot.pause(0.3)
        await pilot.press("1", "n", "f")
        await pilot.pause(0.1)
        assert app.is_running


def damaged_text(original: bytes, damage) -> str:
    if isinstance(damage, dict):  # fields merged over the real ones
        return json.dumps({**json.loads(original), **damage})
    return original.decode()[: len(original) // 2] if damage == "truncated" else damage


# each walk damages files that do not hide each other (a broken manifest would keep the browser from reading labels)
DAMAGE = {
    "records": {
        "models/demo-1/status.json": {"state": ["x"], "updated": 1e20, "pid": 10**30},
        "models/demo-1/config.json": "[]",
        "models/demo-1/dataset.json": "[]",
        "activations/*/status.json": {"state": "finished", "tokens": "lots", "updated": -5, "host": 3},
        "saes/sae-1/status.json": {"state": "finished", "fvu": "x", "l0": "x", "dead_fraction": None},
        "saes/sae-1/metrics.jsonl": '{"kind": "step", "step": "x"}\n{"kind": "eval"}\n' + DEEP + "\n",
        "features/sae-1/status.json": "truncated",
        "features/sae-1/labels.json": "[]",
    },
    "manifest": {"activations/*/manifest.json": DEEP},
    "summary and meta": {"activations/*/summary.json": {"provenance": "oops"}, "saes/sae-1/meta.json": "[]"},
    "index": {"features/sae-1/index.json": {"summary": None, "d_sae": -1}},
    "concepts": {"features/sae-1/concepts.json": "{}", "features/sae-1/status.json": "[]"},
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
async def test_the_app_opens_home_every_run_and_the_browser_on_damaged_files(fuzzed, damage):
    ws, _ = fuzzed
    originals = {path: path.read_bytes() for path in (next(ws.root.glob(pattern)) for pattern in damage)}
    before = fingerprint(ws.root, skip=None)
    try:
        for (path, original), change in zip(originals.items(), damage.values()):
            path.write_text(damaged_text(original, change))
        await walk_the_app(ws.root)
        assert not (ws.root / "error.log").exists(), (ws.root / "error.log").read_text()[-2000:]
    finally:
        for path, original in originals.items():
            path.write_bytes(original)
    assert fingerprint(ws.root, skip=None) == before


@pytest.mark.parametrize(
    "relative, damage",
    [
        ("models/demo-1/dataset.json", "[]"),
        ("models/demo-1/dataset.json", '{"class_names": 3}'),
        ("models/demo-1/dataset.json", '{"class_names": ["one", "two"]}'),
        ("models/demo-1/config.json", '{"model": []}'),
    ],
)
def test_collecting_from_a_model_with_a_damaged_file_is_one_sentence(fuzzed, relative, damage):
    ws, _ = fuzzed
    path = ws.root / relative
    original = path.read_bytes()
    try:
        path.write_text(damage)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli.main(
                ["--workspace", str(ws.root), "collect", "--model", "demo-1", "--name", "fuzzed", "--limit", "4"]
            )
    finally:
        path.write_bytes(original)
    assert code == 1 and "internal error" not in err.getvalue(), err.getvalue()
    assert relative.split("/")[-1] in err.getvalue() and not (ws.root / "activations" / "fuzzed").exists()
