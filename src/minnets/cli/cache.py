"""``minnets cache``: how much disk the caches take, and ``--clear`` to free it.

Everything minnets caches lives below one folder, ``$MINNETS_CACHE`` or ``~/.cache/minnets``:
compressed and corrupted test sets (rebuilt on demand, from seconds to minutes) and the native
kernel's builds (about a second to rebuild). Nothing there is a result: run directories hold
those, so clearing the cache never loses work.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from minnets.errors import MinnetsError
from minnets.files import cache_folder

KNOWN = {
    "jpeg": "JPEG-compressed test sets (minnets jpeg)",
    "corruptions": "corrupted test sets (minnets corruptions)",
    "kernels": "native Min-unit kernel builds",
}


def folder_size(path: Path) -> tuple[int, int]:
    """(bytes, files) below ``path``; files that vanish while it is walked are skipped."""
    total = files = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
            files += 1
    return total, files


def format_bytes(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def run(args: argparse.Namespace) -> int:
    root = cache_folder()  # $MINNETS_CACHE or ~/.cache/minnets: the folder above every cache
    caches = sorted(path for path in root.iterdir() if path.is_dir()) if root.is_dir() else []
    if args.clear is not None:
        chosen = caches if args.clear == "all" else [path for path in caches if path.name == args.clear]
        if args.clear != "all" and not chosen:
            names = ", ".join(path.name for path in caches) or "none"
            raise MinnetsError(f"no cache named {args.clear!r} in {root} (there: {names}); "
                               "`minnets cache` lists them")
        for path in chosen:
            size, _ = folder_size(path)
            try:
                shutil.rmtree(path)
            except OSError as error:
                raise MinnetsError(f"cannot clear {path}: {error.strerror or error}") from None
            print(f"cleared {path} ({format_bytes(size)})")
        if not chosen:
            print(f"nothing to clear in {root}")
        return 0
    print(f"cache folder: {root} (set $MINNETS_CACHE to move it)")
    if not caches:
        print("empty")
        return 0
    total = 0
    rows = []
    for path in caches:
        size, files = folder_size(path)
        total += size
        rows.append((path.name, format_bytes(size), f"{files} file" + ("" if files == 1 else "s"),
                     KNOWN.get(path.name, "")))
    rows.append(("total", format_bytes(total), "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for name, size, files, what in rows:
        print(f"  {name:<{widths[0]}}  {size:>{widths[1]}}  {files:>{widths[2]}}  {what}".rstrip())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cache", help="show the size of the caches (JPEG and corrupted test sets, kernels) or clear them",
        description="Show how much disk each cache below $MINNETS_CACHE (default ~/.cache/minnets) takes. "
        "Caches hold only what minnets rebuilds on demand, never results: clearing them loses no work.",
    )
    parser.add_argument("--clear", nargs="?", const="all", metavar="NAME",
                        help="delete one cache (e.g. jpeg) or, without NAME, all of them")
    parser.set_defaults(handler=run)
