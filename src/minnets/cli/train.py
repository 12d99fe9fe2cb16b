"""``minnets train`` and ``minnets evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from minnets.models import INIT_SCHEMES
from minnets.training import RECIPES, TrainOptions, train
from minnets.training.trainer import EVAL_BATCH_SIZE, evaluate


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", help="folder holding cifar-10-batches-py/ (or the .tar.gz); "
                        "default: $MINNETS_DATA")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")


def run_train(args: argparse.Namespace) -> int:
    options = TrainOptions(
        model=args.model, dataset=args.dataset, data=args.data, download=args.download, recipe=args.recipe,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, subset=args.subset,
        test_subset=args.test_subset,
        init=args.init, memory_efficient=args.memory_efficient, amp=args.amp, channels_last=args.channels_last,
        float64=args.float64,
        compile=args.compile, device=args.device, quiet=args.quiet,
    )
    train(options, args.out)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from minnets.data import BatchLoader, load_dataset
    from minnets.training import distributed, load_run_model

    context = distributed.setup(args.device)
    model, config = load_run_model(Path(args.run_dir), context.device)
    dataset = load_dataset(config["dataset"], root=args.data or config.get("data"))
    loader = BatchLoader(dataset.test_images, dataset.test_labels, EVAL_BATCH_SIZE, train=False, seed=0,
                         mean=dataset.mean, std=dataset.std, device=context.device)
    result = evaluate(model, loader, dataset.num_classes, context)
    print(f"{args.run_dir}: {config['model']} on {dataset.name} test set ({result['n_images']:,} images)")
    print(f"test error {result['test_err']:.2f}%  test loss {result['test_loss']:.4f}")
    width = max(len(name) for name in dataset.classes)
    for name, error in zip(dataset.classes, result["per_class_err"]):
        print(f"  {name:<{width}}  {error:6.2f}%")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model (resumes an existing run directory)",
        description="Train one model with a recipe; running the same command again resumes the run. "
        "Under `torchrun --nproc_per_node K -m minnets train ...` it runs DDP with the same global batch.",
    )
    parser.add_argument("--model", required=True, help="a name from `minnets models`")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (created or resumed)")
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "cifar100", "shapes10"))
    parser.add_argument("--download", action="store_true", help="fetch the dataset archive if it is missing")
    parser.add_argument("--recipe", choices=tuple(RECIPES), help="default: the paper's recipe of the model family")
    parser.add_argument("--epochs", type=int, help="override the recipe (lr drops stay at 1/2 and 3/4)")
    parser.add_argument("--batch-size", type=int, help="global batch size (override the recipe)")
    parser.add_argument("--lr", type=float, help="initial learning rate (override the recipe)")
    parser.add_argument("--seed", type=int, default=0, help="model init and batch order (default 0)")
    parser.add_argument("--subset", type=int, metavar="N", help="train on the first N training images")
    parser.add_argument("--test-subset", type=int, metavar="N",
                        help="evaluate on the first N test images (quick checks; default and paper: all)")
    parser.add_argument("--init", choices=INIT_SCHEMES, default="published",
                        help="published: as the paper's runs; same: the family's baseline init for every model")
    parser.add_argument("--memory-efficient", action="store_true", help="DenseNet gradient checkpointing")
    parser.add_argument("--amp", choices=("none", "bf16"), default="none", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--float64", action="store_true",
                        help="double precision (slow): for exact numerical comparisons, e.g. DDP against one process")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    add_data_arguments(parser)
    parser.set_defaults(handler=run_train)

    parser = subparsers.add_parser("evaluate", help="test error, loss and per-class error of a finished run")
    parser.add_argument("run_dir", metavar="RUN_DIR")
    add_data_arguments(parser)
    parser.set_defaults(handler=run_evaluate)
