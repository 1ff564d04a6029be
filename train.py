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

from utils.cli import configure_logging, fail, load_config_or_exit


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
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="override any config field, e.g. train.epochs=10 model.input_size=[320,320]",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    if args.resume:
        if not (args.resume / "resume_state.npz").is_file():
            return fail(f"--resume {args.resume}: no resume_state.npz there (did an epoch finish?)")
        cfg = load_config_or_exit(args.resume / "config.yaml", args.overrides)
    else:
        cfg = load_config_or_exit(args.config, args.overrides)

    from utils.engine.trainer import (  # heavy imports after argument checks
        NonFiniteLossError,
        train,
    )

    try:
        result = train(cfg, resume_dir=args.resume, verbose=2 if args.quiet else "auto")
    except NonFiniteLossError as exc:
        return fail(str(exc))
    except (FileNotFoundError, ValueError) as exc:
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
