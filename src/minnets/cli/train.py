"""``minnets train`` and ``minnets evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from minnets.config import RunConfig, add_config_arguments, config_from_args


def run_train(args: argparse.Namespace) -> int:
    from minnets.training import train

    base = RunConfig.from_json(args.config) if args.config else None
    train(config_from_args(args, base), args.out, download=args.download, quiet=args.quiet)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from minnets.data import BatchLoader, load_dataset
    from minnets.rundir import load_run_model, test_split
    from minnets.training import distributed
    from minnets.training.trainer import EVAL_BATCH_SIZE, evaluate

    context = distributed.setup(args.device)
    model, config = load_run_model(Path(args.run_dir), context.device)
    dataset = load_dataset(config.dataset, root=args.data or config.data)
    images, labels = test_split(dataset, config)
    loader = BatchLoader(images, labels, EVAL_BATCH_SIZE, train=False, seed=0, mean=dataset.mean, std=dataset.std,
                         device=context.device, dtype=next(model.parameters()).dtype)
    result = evaluate(model, loader, dataset.num_classes, context, config.amp)
    subset = f", its --test-subset {config.test_subset}" if config.test_subset else ""
    print(f"{args.run_dir}: {config.model} on {dataset.name} test set ({result['n_images']:,} images{subset})")
    print(f"test error {result['test_err']:.2f}%  test loss {result['test_loss']:.4f}")
    width = max(len(name) for name in dataset.classes)
    for name, error in zip(dataset.classes, result["per_class_err"]):
        print(f"  {name:<{width}}  {error:6.2f}%")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model (resumes an existing run directory)",
        description="Train one model with a recipe; running the same command again resumes the run. "
        "Under `torchrun --nproc_per_node K -m minnets train ...` it runs DDP with the same global batch. "
        "Every option is a field of the run config that config.json records; --config FILE starts from "
        "such a file (e.g. another run's config.json), and flags given beside it override its values.",
    )
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (created or resumed)")
    parser.add_argument("--config", metavar="FILE", help="a run config (JSON) to start from")
    add_config_arguments(parser)
    parser.add_argument("--download", action="store_true", help="fetch the dataset archive if it is missing")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    parser.set_defaults(handler=run_train)

    parser = subparsers.add_parser("evaluate", help="test error, loss and per-class error of a finished run")
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--data", metavar="DIR", help="dataset folder (default: the one the run recorded)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    parser.set_defaults(handler=run_evaluate)
