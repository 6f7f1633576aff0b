"""Progress display: silent unless a face turns it on for a terminal; nested tasks; no cost when off."""

import io

from soc import progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tasks_are_silent_without_a_face(capsys):
    assert not progress.active()
    with progress.task("work", total=3) as bar:
        bar.advance()
        bar.note("half")
    assert not progress.active()
    assert capsys.readouterr() == ("", "")  # nothing printed on stdout or stderr


def test_shown_draws_bars_on_a_terminal_and_not_on_a_pipe():
    tty, pipe = _Tty(), io.StringIO()
    with progress.shown(True, tty):
        assert progress.active()
        with progress.task("outer", total=2, unit="layer") as outer:
            with progress.task("inner", total=4) as inner:
                inner.advance(4)
            outer.advance(2)
    assert "outer" in tty.getvalue() and "inner" in tty.getvalue()
    with progress.shown(True, pipe):
        assert not progress.active()
        with progress.task("outer", total=2):
            pass
    assert pipe.getvalue() == ""
    assert not progress.active()


def test_disabled_by_quiet():
    tty = _Tty()
    with progress.shown(False, tty):
        with progress.task("outer", total=2) as bar:
            bar.advance()
    assert tty.getvalue() == ""
