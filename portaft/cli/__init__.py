"""`portaft` on the command line. Each subcommand lives in its own module; this one wires."""

from __future__ import annotations

import argparse
import sys
import traceback

from portaft.errors import UserError

from . import backends_cmd, plugins_cmd, run_cmd, validate_cmd

COMMANDS = (run_cmd, validate_cmd, backends_cmd, plugins_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portaft", description="One fine-tuning recipe, any accelerator.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except UserError as exc:
        print(f"portaft: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("portaft: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("portaft: internal error (the traceback above is portaft's fault, not yours: please report it)",
              file=sys.stderr)
        return 1
