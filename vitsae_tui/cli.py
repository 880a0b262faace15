"""`vitsae-tui` entry point: no subcommand opens the app; subcommands run stages headless.

Only the standard library and the config module are imported at the top, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from vitsae_tui import __version__
from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.config import SWEPT_FIELDS, DataConfig
from vitsae_tui.engine.errors import StageError, UserError, resource_message
from vitsae_tui.engine.events import Started
from vitsae_tui.engine.stages import REGISTRY, STAGES, Stage


def _help(cls, name: str) -> str:
    return config_mod.field_help(cls).get(name, "").replace("%", "%%")  # argparse formats help with %


def _add_fields(parser: argparse.ArgumentParser, cls, names: tuple[str, ...], lists: tuple[str, ...] = ()) -> None:
    """Options for config fields, typed and documented by the dataclass; unset ones keep the preset's value.
    Fields in `lists` take comma-separated values (a sweep)."""
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    for name in names:
        flag = "--" + name.replace("_", "-")
        kind = types[name]
        if kind in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=_help(cls, name))
        else:
            converter = {"int": int, "float": float, "str": str}.get(
                kind if isinstance(kind, str) else kind.__name__, str
            )
            metavar = METAVARS.get(name, name.upper())
            help_text = _help(cls, name)
            if name in lists:
                converter, metavar = _list_of(converter), f"{metavar}[,{metavar}…]"
                help_text += "; several values train one SAE per combination in one pass over the data"
            parser.add_argument(flag, type=converter, default=None, metavar=metavar, help=help_text)


def _list_of(converter: Callable) -> Callable:
    def parse(text: str) -> tuple:
        try:
            values = tuple(converter(part.strip()) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of values") from None
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{text!r} repeats a value")
        return values

    parse.__name__ = converter.__name__  # argparse names the type in its error message
    return parse


def _overrides(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


# fields that name a run or an activation set: their flags say so
METAVARS = {"model": "RUN", "sae": "RUN", "activations": "SET", "data_dir": "DIR", "spec": "SPEC", "weights": "FILE"}
DATA_FIELDS = ("dataset", "n_train", "n_val", "data_seed", "imagenette_size", "val_fraction", "data_dir")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not 0 or a positive number")
    return value


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitsae-tui",
        description="Train a vision model, collect its activations, train a JumpReLU SAE and browse its features. "
        "With no command, opens the terminal app.",
    )
    parser.add_argument("--version", action="version", version=f"vitsae-tui {__version__}")
    parser.add_argument(
        "--workspace", metavar="DIR", help="workspace folder (default: $VITSAE_WORKSPACE or the user data dir)"
    )
    parser.add_argument(
        "--demo-size",
        choices=["demo", "tiny"],
        default="demo",
        help="what the app's guided run (g) builds: 'demo' (default) or 'tiny' (seconds; a smoke test)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    for stage in STAGES:
        sub = commands.add_parser(stage.name, help=stage.summary)
        if stage.presets:
            sub.add_argument(
                "--preset",
                choices=list(config_mod.PRESETS),
                default="demo",
                help="starting configuration (default: demo)",
            )
        if stage.resumable:
            sub.add_argument("--resume", metavar="RUN", help=f"continue {stage.kind}/RUN from its last checkpoint")
        sub.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace folder")
        flags = stage.cli_fields
        if stage.positional:  # the one thing the command is about, given as a plain argument
            sub.add_argument(
                stage.positional,
                nargs="?",
                metavar=METAVARS[stage.positional],
                help=_help(stage.config, stage.positional),
            )
            flags = tuple(name for name in flags if name != stage.positional)
        _add_fields(sub, stage.config, flags, SWEPT_FIELDS if stage.name == "train-sae" else ())
        if stage.takes_data:
            _add_fields(sub, DataConfig, DATA_FIELDS)

    inspect = commands.add_parser("inspect", help="print the top SAE features of every patch of one image")
    inspect.add_argument(
        "--sae", metavar="RUN", required=True, help="SAE run in saes/ (indexed with `vitsae-tui index`)"
    )
    inspect.add_argument("--image", metavar="N", type=int, required=True, help="image number in the activation set")
    inspect.add_argument("--token", metavar="T", type=int, help="only this patch (0-35, row-major)")
    inspect.add_argument("--top", metavar="K", type=positive_int, default=5, help="features per patch (default 5)")
    inspect.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace folder")

    feature = commands.add_parser("feature", help="print one feature's statistics and top examples")
    feature.add_argument(
        "--sae", metavar="RUN", required=True, help="SAE run in saes/ (indexed with `vitsae-tui index`)"
    )
    feature.add_argument("id", metavar="ID", type=int, help="feature number")
    feature.add_argument(
        "--png", metavar="FILE", help="also write the feature's card (top images with heatmaps) as a PNG"
    )
    feature.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace folder")

    concepts = commands.add_parser(
        "concepts", help="print concept recovery on held-out images: SAE vs neurons vs probe vs object baseline"
    )
    concepts.add_argument(
        "--sae", metavar="RUN", required=True, help="SAE run in saes/ (indexed with `vitsae-tui index`)"
    )
    concepts.add_argument("--json", action="store_true", help="print the whole report as JSON")
    concepts.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace folder")

    compare = commands.add_parser(
        "compare", help="compare every SAE trained on an activation set: held-out metrics and the L0-FVU Pareto set"
    )
    compare.add_argument("--activations", metavar="SET", required=True, help="activation set in activations/")
    compare.add_argument("--json", action="store_true", help="print every SAE's metrics as JSON")
    compare.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace folder")

    attribute = commands.add_parser(
        "attribute", help="attribute one image's prediction to SAE features and patches (through the model)"
    )
    attribute.add_argument("--sae", metavar="RUN", required=True, help="SAE run in saes/ (indexed)")
    attribute.add_argument("--image", metavar="N", type=int, required=True, help="image number in the activation set")
    attribute.add_argument(
        "--class", dest="target", metavar="C", help="class to attribute, by number or name (default: predicted)"
    )
    attribute.add_argument(
        "--top", metavar="K", type=non_negative_int, default=16, help="features checked by exact ablation (0: all)"
    )
    attribute.add_argument("--json", action="store_true", help="print the result as JSON")
    attribute.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    attribute.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace folder")

    intervene = commands.add_parser("intervene", help="edit SAE features on one image and see the prediction move")
    intervene.add_argument("--sae", metavar="RUN", required=True, help="SAE run in saes/ (indexed)")
    intervene.add_argument("--image", metavar="N", type=int, required=True, help="image number in the activation set")
    intervene.add_argument("--feature", metavar="F[,G…]", type=int_list, required=True, help="features to edit")
    how = intervene.add_mutually_exclusive_group(required=True)
    how.add_argument("--zero", action="store_true", help="set the features to 0")
    how.add_argument("--scale", metavar="S", type=float, help="multiply the features by S")
    how.add_argument("--clamp", metavar="V", type=float, help="set the features to V where they are edited")
    how.add_argument("--add", metavar="S", type=float, help="add S along each feature's decoder direction (steering)")
    intervene.add_argument("--patches", metavar="I,J,…", type=int_list, help="only these patches (default: all)")
    intervene.add_argument(
        "--class", dest="target", metavar="C", help="class to follow, by number or name (default: predicted)"
    )
    intervene.add_argument("--json", action="store_true", help="print the result as JSON")
    intervene.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    intervene.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace folder")

    demo = commands.add_parser("demo", help="run every missing stage of the pipeline on the built-in offline data")
    demo.add_argument(
        "--size",
        choices=["demo", "tiny"],
        default="demo",
        help="'demo' (the default pipeline, a few minutes on a laptop CPU) or 'tiny' (seconds; a smoke test)",
    )
    demo.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace folder")

    runs = commands.add_parser("runs", help="list what the workspace holds")
    runs.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace folder")
    parser.set_defaults(subcommands=commands.choices)
    return parser


def stage_config(stage: Stage, args: argparse.Namespace):
    """The stage's config from its flags: the preset's or the class's defaults, then every flag that was given (the
    first value of a swept field's list)."""
    base = config_mod.preset(args.preset) if stage.presets else stage.config()
    given = {k: v[0] if isinstance(v, tuple) else v for k, v in _overrides(args, stage.cli_fields).items()}
    values = {**config_mod.to_dict(base), **given}
    if stage.takes_data:
        values["data"] = {**config_mod.to_dict(base.data), **_overrides(args, DATA_FIELDS)}
    return config_mod.from_dict(stage.config, values)


DUPLICATE_SIGNAL_S = 1.0
"""a second stop signal this soon after the first is the same request (a supervisor and its wrapper shell often both
send one); a later one forces the exit"""


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP (the SSH link dropped) ask the stage to checkpoint and return; a second one after
    DUPLICATE_SIGNAL_S forces the exit with one line naming what keeps its checkpoint. The handler never raises."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.first_at: float | None = None
        self.run: tuple[str, str] | None = None
        """(stage, run folder) of the stage running now, from its Started event"""
        self.under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.is_main = int(os.environ.get("RANK", "0")) == 0

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                signal.signal(sig, self.handle)

    def follow(self, report: Callable) -> Callable:
        """The report, also remembering which run the stage writes."""

        def follow_and_report(event) -> None:
            if isinstance(event, Started):
                self.run = (event.stage, event.run_dir)
            report(event)

        return follow_and_report

    def handle(self, signum, _frame) -> None:
        from vitsae_tui.cli_streams import say

        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
            self.stop.set()
            if self.is_main:
                say(f"\n{signal.Signals(signum).name}: stopping after the current step and saving a checkpoint…")
            return
        # torchrun's agent repeats the user's Ctrl-C as SIGTERM: only the first request counts there
        if self.under_torchrun or now - self.first_at < DUPLICATE_SIGNAL_S:
            return
        if self.is_main:
            say(f"vitsae-tui: forced exit before the stop finished; {self.resume_hint()}")
        os._exit(130)

    def resume_hint(self) -> str:
        if self.run is None:
            return "nothing was written yet"
        stage, run_dir = self.run
        name = Path(run_dir).name
        resumable = REGISTRY[stage].resumable if stage in REGISTRY else False
        how = f"`vitsae-tui {stage} --resume {name}` continues it" if resumable else "the same command continues it"
        return f"{Path(run_dir).parent.name}/{name} keeps its last checkpoint; {how}"


def _run_stage(stage: Callable, *args, **kwargs) -> int:
    from vitsae_tui.cli_progress import ConsoleReport, RankReport
    from vitsae_tui.cli_streams import guard_standard_streams

    guard_standard_streams()  # a log reader that exits (| head, | tee then Ctrl-C) must not end the run
    stop = threading.Event()
    signals = StopSignals(stop)
    signals.install()
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun; engine.distributed is not imported before --help
    code = 0
    with ConsoleReport() if rank == 0 else RankReport(rank) as report:
        try:
            stage(*args, report=signals.follow(report), stop=stop, **kwargs)
        except StageError as e:  # already reported as one sentence; a bug's traceback goes to stderr too
            if e.bug is not None:
                traceback.print_exception(e.bug, file=sys.stderr)
            code = USER_ERROR
    if "WORLD_SIZE" in os.environ:
        # every file is written and synced by now; skipping interpreter teardown avoids an intermittent abort
        # (std::terminate) in torch.distributed's exit path that would turn a finished rank into a failed job
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def cmd_stage(args: argparse.Namespace) -> int:
    from vitsae_tui.engine.workspace import Workspace

    stage = REGISTRY[args.command]
    resume = getattr(args, "resume", None)
    # a resumed run continues with its own saved config; only the preset's defaults are needed to name it
    cfg = stage_config(stage, args)
    if stage.required and not getattr(cfg, stage.required) and not resume:
        flag = "" if stage.positional == stage.required else "--" + stage.required.replace("_", "-") + " "
        alternative = " or --resume RUN" if stage.resumable else ""
        print(
            f"vitsae-tui: {stage.name} needs {flag}{METAVARS[stage.required]}{alternative} (see `vitsae-tui runs`)",
            file=sys.stderr,
        )
        return 2
    ignored = [*_overrides(args, stage.cli_fields), *(_overrides(args, DATA_FIELDS) if stage.takes_data else ())]
    if resume and ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        print(
            f"vitsae-tui: {flags} ignored: a resumed run continues with the settings it was started with "
            f"({stage.kind}/{resume}/config.json); start a new run to change them",
            file=sys.stderr,
        )
    ws = Workspace(args.workspace)
    if stage.name == "train-sae":
        swept = {name: getattr(args, name) for name in SWEPT_FIELDS if getattr(args, name) is not None}
        cfgs = config_mod.sweep_configs(cfg, **swept)
        if len(cfgs) > 1 and not resume:
            from vitsae_tui.engine.stages.train_sae import run_sweep

            return _run_stage(run_sweep, cfgs, ws)
        cfg = cfgs[0]
    return _run_stage(stage.run, cfg, ws, **({"resume": resume} if stage.resumable else {}))


def _open_index(args: argparse.Namespace):
    from vitsae_tui.engine.feature_index import open_index_for
    from vitsae_tui.engine.workspace import Workspace

    return open_index_for(Workspace.existing(args.workspace), args.sae)


def cmd_inspect(args: argparse.Namespace) -> int:
    from vitsae_tui.cli_print import print_image_features

    print_image_features(_open_index(args), args.image, args.token, args.top)
    return 0


def cmd_feature(args: argparse.Namespace) -> int:
    from vitsae_tui.cli_print import print_feature

    index = _open_index(args)
    print_feature(index, args.id)
    if args.png:
        from vitsae_tui.engine.cards import feature_card
        from vitsae_tui.engine.text import shown

        target = Path(args.png).expanduser()
        if target.is_dir() or not target.parent.is_dir():
            problem = "is a folder" if target.is_dir() else "is in a folder that does not exist"
            raise UserError(f"--png {shown(args.png)} {problem}; give a file name in an existing folder")
        try:
            print(f"card written to {shown(feature_card(index, args.id, target))}")
        except OSError as e:
            raise UserError(resource_message(e) or f"--png {shown(args.png)} cannot be written ({e.strerror})") from e
    return 0


def cmd_concepts(args: argparse.Namespace) -> int:
    from vitsae_tui.cli_print import print_concepts
    from vitsae_tui.engine import config as config_mod

    index = _open_index(args)
    if index.concept_report is None:
        raise UserError(f"features/{index.dir.name} has no concept scores: its set has no ground-truth concept maps")
    if args.json:
        print(json.dumps(config_mod.to_dict(index.concept_report)))
    else:
        print_concepts(index.concept_report)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from vitsae_tui.cli_print import compare_json, print_compare
    from vitsae_tui.engine.compare import points
    from vitsae_tui.engine.workspace import Workspace

    found = points(Workspace.existing(args.workspace), args.activations)
    if args.json:
        print(json.dumps(compare_json(found)))
    else:
        print_compare(args.activations, found)
    return 0


def _workbench(args: argparse.Namespace):
    from vitsae_tui.engine.feature_index import open_index_for
    from vitsae_tui.engine.workbench import Workbench
    from vitsae_tui.engine.workspace import Workspace

    ws = Workspace.existing(args.workspace)
    return Workbench(ws, open_index_for(ws, args.sae), args.device)


def _show(args: argparse.Namespace, bench, result, as_json, print_table) -> int:
    """A workbench result as JSON (--json) or as tables."""
    if args.json:
        print(json.dumps(as_json(bench, result)))
    else:
        print_table(bench, result)
    return 0


def cmd_attribute(args: argparse.Namespace) -> int:
    from vitsae_tui.cli_print import attribution_json, print_attribution

    bench = _workbench(args)
    target = _target(bench, args)
    return _show(args, bench, bench.attribute(args.image, target, args.top), attribution_json, print_attribution)


def _target(bench, args: argparse.Namespace) -> int | None:
    """--class as a number or a class name (None: the predicted class)."""
    from vitsae_tui.engine.workbench import resolve_class

    return None if args.target is None else resolve_class(args.target, bench.class_names)


def cmd_intervene(args: argparse.Namespace) -> int:
    from vitsae_tui.cli_print import edit_json, print_edit
    from vitsae_tui.engine.workbench import Edit

    mode, value = next(
        (mode, value)
        for mode, value in (
            ("zero", 0.0 if args.zero else None),
            ("scale", args.scale),
            ("clamp", args.clamp),
            ("add", args.add),
        )
        if value is not None
    )
    bench = _workbench(args)
    result = bench.intervene(args.image, Edit(tuple(args.feature), mode, value, args.patches), _target(bench, args))
    return _show(args, bench, result, edit_json, print_edit)


def cmd_demo(args: argparse.Namespace) -> int:
    from vitsae_tui.engine.pipeline import run_pipeline
    from vitsae_tui.engine.workspace import Workspace

    return _run_stage(run_pipeline, Workspace(args.workspace), size=args.size)


def cmd_runs(args: argparse.Namespace) -> int:
    from vitsae_tui.cli_print import print_runs
    from vitsae_tui.engine.workspace import Workspace

    print_runs(Workspace.existing(args.workspace))
    return 0


USER_ERROR = 1
"""the exit status of every error the user can fix (one sentence on stderr); argparse's usage errors exit 2"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # a typo in a subcommand's flag: that subcommand's usage, not the top-level one
        (args.subcommands.get(args.command) or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.workspace is not None and not args.workspace.strip():
        (args.subcommands.get(args.command) or parser).error(
            "--workspace needs a folder; leave the option out to use the default workspace"
        )
    try:
        if args.command is None:
            from vitsae_tui.tui.app import run_app

            return run_app(args.workspace, args.demo_size)
        from vitsae_tui.cli_streams import guard_standard_streams

        guard_standard_streams()  # `vitsae-tui runs | head` ends quietly
        if args.command in REGISTRY:
            return cmd_stage(args)
        return {
            "inspect": cmd_inspect,
            "feature": cmd_feature,
            "concepts": cmd_concepts,
            "compare": cmd_compare,
            "attribute": cmd_attribute,
            "intervene": cmd_intervene,
            "demo": cmd_demo,
            "runs": cmd_runs,
        }[args.command](args)
    except UserError as e:
        from vitsae_tui.engine.text import MAX_MESSAGE, shown

        print(f"vitsae-tui: {shown(e, MAX_MESSAGE)}", file=sys.stderr)
        return USER_ERROR
