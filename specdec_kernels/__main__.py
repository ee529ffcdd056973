"""Command line: ``python -m specdec_kernels info [--json]`` and ``python -m specdec_kernels demo``."""
import argparse
import json

from .info import format_info, info


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m specdec_kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="versions, devices and available backends per op")
    p_info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_demo = sub.add_parser("demo", help="every decoding method on the shipped byte-level models (see demo.py)")
    from . import demo

    demo.add_arguments(p_demo)
    args = parser.parse_args(argv)
    if args.command == "demo":
        raise SystemExit(demo.main(args))
    if args.command == "info":
        facts = info()
        print(json.dumps(facts, indent=2) if args.json else format_info(facts))


if __name__ == "__main__":
    main()
