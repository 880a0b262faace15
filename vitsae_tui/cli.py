"""`vitsae-tui` entry point: no subcommand opens the app; subcommands run stages headless.

Only the standard library and the config module are imported at the top, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Callable

from vitsae_tui import __version__
from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.config import CollectConfig, DataConfig, SAETrainConfig, TrainModelConfig


def _help(cls, name: str) -> str:
    return config_mod.field_help(cls).get(name, "").replace("%", "%%")  # argparse formats help with %


def _add_fields(parser: argparse.ArgumentParser, cls, names: list[str]) -> None:
    """Options for config fields, typed and documented by the dataclass; unset ones keep the preset's value."""
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
            parser.add_argument(flag, type=converter, default=None, metavar=name.upper(), help=_help(cls, name))


def _overrides(args: argparse.Namespace, cls, names: list[str]) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


TRAIN_FIELDS = [
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "lr_schedule",
    "seed",
    "device",
    "bf16",
    "checkpoint_every",
    "num_workers",
]
COLLECT_FIELDS = [
    "model",
    "checkpoint",
    "hook",
    "split",
    "limit",
    "dtype",
    "shard_images",
    "batch_size",
    "device",
    "bf16",
    "name",
]
SAE_FIELDS = [f.name for f in dataclasses.fields(SAETrainConfig)]
DATA_FIELDS = ["dataset", "n_train", "n_val", "data_seed", "imagenette_size", "val_fraction"]


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

    train = commands.add_parser("train-model", help="train the vision classifier headless")
    train.add_argument(
        "--preset", choices=list(config_mod.PRESETS), default="demo", help="starting configuration (default: demo)"
    )
    train.add_argument("--resume", metavar="RUN", help="continue models/RUN from its last checkpoint")
    train.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace folder")
    _add_fields(train, TrainModelConfig, TRAIN_FIELDS)
    _add_fields(train, DataConfig, DATA_FIELDS)

    collect = commands.add_parser("collect", help="record a hook point's activations into an activation set")
    collect.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace folder")
    _add_fields(collect, CollectConfig, COLLECT_FIELDS)
    _add_fields(collect, DataConfig, DATA_FIELDS)

    sae = commands.add_parser("train-sae", help="train a JumpReLU sparse autoencoder on an activation set")
    sae.add_argument("--resume", metavar="RUN", help="continue saes/RUN from its last checkpoint")
    sae.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace folder")
    _add_fields(sae, SAETrainConfig, SAE_FIELDS)

    index = commands.add_parser(
        "index", help="build the feature index of a trained SAE (top examples, densities, concepts)"
    )
    index.add_argument("--sae", metavar="RUN", required=True, help="SAE run in saes/")
    index.add_argument(
        "--activations", metavar="SET", help="activation set to index (default: the one the SAE was trained on)"
    )
    index.add_argument("--device", default="auto", help="'auto', 'cuda', 'cuda:N', 'mps' or 'cpu'")
    index.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace folder")

    inspect = commands.add_parser("inspect", help="print the top SAE features of every patch of one image")
    inspect.add_argument(
        "--sae", metavar="RUN", required=True, help="SAE run in saes/ (indexed with `vitsae-tui index`)"
    )
    inspect.add_argument("--image", metavar="N", type=int, required=True, help="image number in the activation set")
    inspect.add_argument("--token", metavar="T", type=int, help="only this patch (0-35, row-major)")
    inspect.add_argument("--top", metavar="K", type=int, default=5, help="features per patch (default 5)")
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


def train_model_config(args: argparse.Namespace) -> TrainModelConfig:
    base = config_mod.preset(args.preset)
    data = dataclasses.replace(base.data, **_overrides(args, DataConfig, DATA_FIELDS))
    return config_mod.from_dict(
        TrainModelConfig,
        {
            **config_mod.to_dict(base),
            **_overrides(args, TrainModelConfig, TRAIN_FIELDS),
            "data": config_mod.to_dict(data),
        },
    )


def _install_stop_signals(stop: threading.Event) -> None:
    """SIGINT, SIGTERM and SIGHUP (the SSH link dropped) ask the stage to checkpoint and return."""
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1

    def handler(signum, _frame):
        # a second signal forces the exit, except under torchrun, whose agent repeats the user's Ctrl-C as SIGTERM
        if stop.is_set() and not under_torchrun:
            raise KeyboardInterrupt
        if not stop.is_set() and int(os.environ.get("RANK", "0")) == 0:
            print(
                f"\n{signal.Signals(signum).name}: stopping after the current step and saving a checkpoint…",
                file=sys.stderr,
            )
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, handler)


def _run_stage(stage: Callable, *args, **kwargs) -> int:
    from vitsae_tui.cli_progress import ConsoleReport, RankReport

    stop = threading.Event()
    _install_stop_signals(stop)
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun; engine.distributed is not imported before --help
    code = 0
    with ConsoleReport() if rank == 0 else RankReport(rank) as report:
        try:
            stage(*args, report=report, stop=stop, **kwargs)
        except Exception as e:  # stages raise StageError with a user message; anything else is a bug to show
            from vitsae_tui.engine.errors import StageError

            if not isinstance(e, StageError):
                raise
            code = USER_ERROR
    if "WORLD_SIZE" in os.environ:
        # every file is written and synced by now; skipping interpreter teardown avoids an intermittent abort
        # (std::terminate) in torch.distributed's exit path that would turn a finished rank into a failed job
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def cmd_train_model(args: argparse.Namespace) -> int:
    from vitsae_tui.engine.train_model import train_model
    from vitsae_tui.engine.workspace import Workspace

    cfg = train_model_config(args) if not args.resume else config_mod.preset(args.preset)
    return _run_stage(train_model, cfg, Workspace(args.workspace), resume=args.resume)


def collect_config(args: argparse.Namespace) -> CollectConfig:
    data = dataclasses.replace(DataConfig(), **_overrides(args, DataConfig, DATA_FIELDS))
    return config_mod.from_dict(
        CollectConfig, {**_overrides(args, CollectConfig, COLLECT_FIELDS), "data": config_mod.to_dict(data)}
    )


def cmd_collect(args: argparse.Namespace) -> int:
    from vitsae_tui.engine.activations import collect
    from vitsae_tui.engine.workspace import Workspace

    cfg = collect_config(args)
    if not cfg.model:
        print("vitsae-tui: collect needs --model RUN (a trained run from `vitsae-tui runs`)", file=sys.stderr)
        return 2
    return _run_stage(collect, cfg, Workspace(args.workspace))


def cmd_train_sae(args: argparse.Namespace) -> int:
    from vitsae_tui.engine.train_sae import train_sae
    from vitsae_tui.engine.workspace import Workspace

    cfg = config_mod.from_dict(SAETrainConfig, _overrides(args, SAETrainConfig, SAE_FIELDS))
    if not cfg.activations and not args.resume:
        print(
            "vitsae-tui: train-sae needs --activations SET (a set from `vitsae-tui runs`) or --resume RUN",
            file=sys.stderr,
        )
        return 2
    return _run_stage(train_sae, cfg, Workspace(args.workspace), resume=args.resume)


def cmd_index(args: argparse.Namespace) -> int:
    from vitsae_tui.engine.features import build_index
    from vitsae_tui.engine.workspace import Workspace

    return _run_stage(
        build_index, Workspace(args.workspace), args.sae, activations=args.activations, device=args.device
    )


def _open_index(args: argparse.Namespace):
    from vitsae_tui.engine.features import open_index_for
    from vitsae_tui.engine.workspace import Workspace

    return open_index_for(Workspace(args.workspace), args.sae)


def cmd_inspect(args: argparse.Namespace) -> int:
    from vitsae_tui.cli_progress import print_image_features

    print_image_features(_open_index(args), args.image, args.token, args.top)
    return 0


def cmd_feature(args: argparse.Namespace) -> int:
    from vitsae_tui.cli_progress import print_feature

    index = _open_index(args)
    print_feature(index, args.id)
    if args.png:
        from vitsae_tui.engine.cards import feature_card

        print(f"card written to {feature_card(index, args.id, args.png)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vitsae_tui.engine.pipeline import run_pipeline
    from vitsae_tui.engine.workspace import Workspace

    return _run_stage(run_pipeline, Workspace(args.workspace), size=args.size)


def cmd_runs(args: argparse.Namespace) -> int:
    from vitsae_tui.cli_progress import print_runs
    from vitsae_tui.engine.workspace import Workspace

    print_runs(Workspace(args.workspace))
    return 0


USER_ERROR = 1
"""the exit status of every error the user can fix (one sentence on stderr); argparse's usage errors exit 2"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # a typo in a subcommand's flag: that subcommand's usage, not the top-level one
        (args.subcommands.get(args.command) or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if args.command is None:
            from vitsae_tui.tui.app import run_app

            return run_app(args.workspace, args.demo_size)
        return {
            "train-model": cmd_train_model,
            "collect": cmd_collect,
            "train-sae": cmd_train_sae,
            "index": cmd_index,
            "inspect": cmd_inspect,
            "feature": cmd_feature,
            "demo": cmd_demo,
            "runs": cmd_runs,
        }[args.command](args)
    except config_mod.ConfigError as e:
        print(f"vitsae-tui: {e}", file=sys.stderr)
        return USER_ERROR
    except Exception as e:
        from vitsae_tui.engine.activation_store import StoreError
        from vitsae_tui.engine.device import DeviceError
        from vitsae_tui.engine.errors import StageError
        from vitsae_tui.engine.workspace import WorkspaceError

        if isinstance(e, (WorkspaceError, DeviceError, StoreError, StageError, IndexError)):
            print(f"vitsae-tui: {e}", file=sys.stderr)
            return USER_ERROR
        raise
