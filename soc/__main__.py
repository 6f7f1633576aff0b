import sys


def run() -> int:
    """The `soc` command: main(), with a Ctrl-C that lands while the CLI is still being imported handled too."""
    try:
        from soc.faces.cli import main
    except KeyboardInterrupt:
        print("soc: interrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
