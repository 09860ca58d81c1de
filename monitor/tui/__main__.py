"""``python -m monitor.tui [--socket PATH | --file PATH | PATH]``: the viewer without the CLI."""

from __future__ import annotations

import argparse
import sys

from monitor.tui.app import rlguard_tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitor.tui", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("source", nargs="?", help="a live socket or an NDJSON file")
    group.add_argument("--socket", help="the monitor's live socket ([output] live_socket)")
    group.add_argument("--file", help="an NDJSON file to replay and follow")
    args = parser.parse_args(argv)
    if args.socket:
        return rlguard_tail(args.socket, "socket")
    if args.file:
        return rlguard_tail(args.file, "file")
    return rlguard_tail(args.source, "auto")


if __name__ == "__main__":
    sys.exit(main())
