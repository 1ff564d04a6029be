"""Train a YOLO detector described by a YAML config.

python train.py --config configs/demo.yaml
python train.py --config configs/base.yaml train.batch_size=16 train.epochs=50
python train.py --resume logs/demo-20261124-201500
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from utils.cli import add_verbose_argument, configure_logging, fail, load_config_or_exit
from utils.config import ConfigError
from utils.deploy.runs import run_config
from utils.engine.run_dir import RunDir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("configs/demo.yaml"),
        help="YAML config to train (default: %(default)s, the generated demo set)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue an interrupted run from its folder (uses its config.yaml)",
    )
    parser.add_argument("--quiet", action="store_true", help="one line per epoch, no progress bar")
    add_verbose_argument(parser)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="override any config field, e.g. train.epochs=10 model.input_size=[320,320]",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(verbose=args.verbose)
    resume = RunDir(args.resume) if args.resume else None
    if resume:
        state = resume.resume_state
        if not (state.is_file() or resume.previous_resume_state.is_file()):
            return fail(f"--resume {resume}: no {state.name} there (did an epoch finish?)")
        try:  # settings newer than the run take their base.yaml defaults
            cfg = run_config(resume, args.overrides)
        except (ConfigError, FileNotFoundError) as exc:
            return fail(str(exc))
    else:
        cfg = load_config_or_exit(args.config, args.overrides)

    # heavy imports after argument checks
    from nets.backbones.keras_applications import ImageNetWeightsError
    from utils.engine.trainer import NonFiniteLossError, Trainer

    try:
        result = Trainer(cfg, resume=resume, verbose=2 if args.quiet else "auto").run()
    except (NonFiniteLossError, ImageNetWeightsError, FileNotFoundError, ValueError) as exc:
        # a data problem (e.g. an empty data.val_split), offline ImageNet weights, a damaged
        # resume state or a NaN stop
        return fail(str(exc))
    best = f"{result.best_value:.4f}" if result.best_value is not None else "n/a"
    logging.getLogger("train").info(
        "done: %d epochs, best %s = %s, run folder %s",
        result.epochs_done,
        cfg.train.best_metric,
        best,
        result.run_dir,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
