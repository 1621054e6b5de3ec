"""The ``edloss`` command line: one subcommand per module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys

from edloss.files import RunFolderBusy

# name -> module that defines ``add_cli(subparsers)``; each registers its parser and sets ``func``.
COMMANDS: dict[str, str] = {
    "pretrain": "edloss.pretrain",
    "inspect": "edloss.inspect",
    "train": "edloss.lab.train",
    "compare": "edloss.lab.compare",
    "ablate": "edloss.lab.ablate_cli",
    "adapt": "edloss.lab.adapt",
    "report": "edloss.lab.report",
    "world-check": "edloss.lab.world",
    "regimes": "edloss.lab.regimes",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edloss", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name not in LAB_PACKAGES:
                raise
            _add_missing_extra(sub, name, err.name)
            continue
        module.add_cli(sub)
    return parser


LAB_PACKAGES = ("numpy", "matplotlib", "scipy", "cma")  # what the lab extra installs


def _add_missing_extra(sub: argparse._SubParsersAction, name: str, missing: str) -> None:
    """A lab command without the lab extra: listed, and explains itself instead of a traceback."""

    def refuse(args: argparse.Namespace) -> int:
        raise ModuleNotFoundError(f"`edloss {name}` is part of the CIFAR lab and needs {missing}: pip install 'edloss[lab]'")

    p = sub.add_parser(name, help="(needs the lab extra: pip install 'edloss[lab]')", add_help=True)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=refuse)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError, ModuleNotFoundError, RunFolderBusy) as err:
        print(f"edloss {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
