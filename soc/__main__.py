import sys


def _interrupt_in_callback(unraisable) -> None:
    """A Ctrl-C that lands in a callback Python cannot raise from (an import lock's weakref callback while the
    CLI is being imported) would print "Exception ignored ... Traceback" and be lost. Deliver it again, from a
    thread so that it reaches the main thread after this hook returns, where the CLI's handlers turn it into
    exit 130."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        import _thread
        _thread.start_new_thread(_thread.interrupt_main, ())
        return
    _previous_hook(unraisable)


_previous_hook = sys.unraisablehook


def run() -> int:
    """The `soc` command: main(), with a Ctrl-C that lands while the CLI is still being imported handled too."""
    sys.unraisablehook = _interrupt_in_callback
    try:
        from soc.faces.cli import main
    except KeyboardInterrupt:
        print("soc: interrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
