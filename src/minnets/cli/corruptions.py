"""``minnets corruptions``: list the CIFAR-10-C corruptions, make the regenerated set, fetch the released one."""

from __future__ import annotations

import argparse
from pathlib import Path

from minnets.cli.options import positive_int
from minnets.errors import MinnetsError


def _list(args: argparse.Namespace) -> int:
    from minnets.robustness import corruptions as C

    print(f"{'corruption':<18} {'group':<9} {'made here':<32} parameters at severities 1-5")
    for name in C.CORRUPTIONS:
        group = "benchmark" if name in C.BENCHMARK else "extra"
        params = C.PARAMETERS[name]
        if name == "zoom_blur":
            text = ", ".join(f"1-{max(p):.2f}" for p in params)
        else:
            text = "; ".join(str(tuple(round(v, 3) for v in p)) if isinstance(p, tuple) else str(p) for p in params)
        print(f"{name:<18} {group:<9} {C.method(name):<32} {text}")
    return 0


def _severities(text: str) -> list[int]:
    """``"1,3"`` -> [1, 3]; anything but severities 1-5 is a one-line error."""
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        values = []
    if not values or any(v not in range(1, 6) for v in values):
        raise MinnetsError(f"invalid --severities {text!r}: give comma-separated severities from 1 to 5")
    return values


def _make(args: argparse.Namespace) -> int:
    from minnets.data import load_dataset
    from minnets.robustness import cifar10c
    from minnets.robustness import corruptions as C

    names = C.parse_corruptions(args.corruptions)
    severities = _severities(args.severities) if args.severities else C.SEVERITIES
    frost_dir = Path(args.frost).expanduser() if args.frost else cifar10c.default_frost_dir()
    if "frost" in names and args.download:
        cifar10c.download_frost(frost_dir)
    dataset = load_dataset("cifar10", root=args.data, download=args.download)
    images = dataset.test_images
    if args.n is not None:
        images = images[:args.n]
    out = Path(args.out).expanduser() if args.out else cifar10c.default_regenerated_dir("cifar10")
    cache = cifar10c.Regenerated(out, images, "cifar10", args.seed, frost_dir, workers=args.workers)
    approx = [name for name in names if C.approximated(name)]
    if approx:
        print(f"minnets: note: {', '.join(approx)} use the numpy stand-in for ImageMagick (Wand/MagickWand not "
              "working here); their rows say source regenerated-approx")
    manifest = cache.make(names, severities)
    print(f"wrote {len(names) * len(severities)} levels of {len(images)} images to {out} (manifest: {manifest})")
    return 0


def _download(args: argparse.Namespace) -> int:
    from minnets.robustness import cifar10c

    folder = cifar10c.download_released(args.data)
    released = cifar10c.Released(folder)
    print(f"released CIFAR-10-C in {folder} ({released.per_severity} images per severity)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "corruptions", help="CIFAR-10-C: list the corruptions, make the regenerated set, download the released one",
        description="CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019). `make` regenerates it offline from the "
        "CIFAR-10 test set with the published parameters and per-image seeds (never bit-equal to the released "
        "files, which were not seeded); `download` fetches the released files. Evaluate with "
        "`minnets robustness RUN_DIR --suite corruptions`.")
    commands = parser.add_subparsers(dest="corruptions_command", required=True, metavar="ACTION")

    listing = commands.add_parser("list", help="the 19 corruptions, their parameters and how each is made here")
    listing.set_defaults(handler=_list)

    make = commands.add_parser(
        "make", help="regenerate CIFAR-10-C from the CIFAR-10 test set (resumable, one file per level)",
        description="Write <corruption>-<severity>.npy for every level asked for and manifest.json (seed, "
        "library versions, sha256 of every array, which corruptions are approximated). Killed, it resumes at "
        "the next missing file.")
    make.add_argument("--data", metavar="DIR", help="folder with CIFAR-10 (default: $MINNETS_DATA)")
    make.add_argument("--out", metavar="DIR", help="where the set goes (default: $MINNETS_CACHE/corruptions/"
                      "regenerated-cifar10, where `minnets robustness --suite corruptions` looks)")
    make.add_argument("--corruptions", default="all", metavar="NAME,...",
                      help="names, benchmark (the 15), extra (the 4) or all (default: %(default)s)")
    make.add_argument("--severities", metavar="S,...", help="severities to make (default: 1,2,3,4,5)")
    make.add_argument("--n", type=positive_int, metavar="N", help="only the first N test images (default: all)")
    make.add_argument("--seed", type=int, default=0, help="base seed of every image's generator (default: 0)")
    make.add_argument("--frost", metavar="DIR", help="folder of the six frost pictures "
                      "(default: $MINNETS_CACHE/corruptions/frost)")
    make.add_argument("--download", action="store_true",
                      help="fetch what is missing: the frost pictures (sha256-checked) and CIFAR-10")
    make.add_argument("--workers", type=positive_int, default=1, help="worker processes (default: %(default)s)")
    make.set_defaults(handler=_make)

    download = commands.add_parser("download", help="fetch the released CIFAR-10-C (2.9 GB, md5-checked)")
    download.add_argument("--data", metavar="DIR", help="where CIFAR-10-C/ goes (default: $MINNETS_DATA, "
                          "else the cache)")
    download.set_defaults(handler=_download)
