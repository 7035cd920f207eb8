"""Progress: a bar on a terminal, whole lines with figures in a log."""

import doctest
import io

import distill.progress
from distill.progress import Progress, track


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_docstring_example_runs():
    assert doctest.testmod(distill.progress).failed == 0


def test_a_log_gets_whole_lines_with_figures_not_frames():
    log = io.StringIO()
    bar = Progress(4, "training", "step", stream=log, every_s=0)
    for loss in (1.5, 1.0, 0.5, 0.25):
        bar.set_figures(loss=f"{loss:.3f}")
        bar.update()
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0] == "training: 0/4 steps"
    assert lines[-1].startswith("training: 4/4 steps (100%) in ") and lines[-1].endswith("loss 0.250")
    assert len(lines) == 6  # the start, each of the 4 steps (every_s=0), the end


def test_a_log_line_only_every_few_minutes_of_a_long_loop():
    log = io.StringIO()
    with Progress(1000, "evaluating", "question", stream=log, every_s=3600) as bar:
        for _ in range(1000):
            bar.update()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2  # the start and the end: no minute passed
    assert lines[1].startswith("evaluating: 1000/1000 questions (100%)")


def test_a_terminal_gets_a_bar():
    screen = Terminal()
    with Progress(3, "checking", "item", stream=screen) as bar:
        for _ in range(3):
            bar.update()
    assert "\r" in screen.getvalue() and "3/3" in screen.getvalue()


def test_disabled_prints_nothing(capsys):
    assert list(track(range(3), "quiet", "item", disable=True)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
