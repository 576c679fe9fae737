"""What the ``hpcportal`` command shows people: tables, sizes, and a progress bar on stderr."""

import json
import shutil
import sys
import time
import unicodedata


def dumps(value):
    """JSON as ``--json`` prints it: the API's objects, UTF-8 kept readable."""
    return json.dumps(value, ensure_ascii=False, indent=2)


def size(count):
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _width(text):
    # Korean and other wide characters take two columns in a terminal.
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def table(rows, columns, out=sys.stdout):
    """``columns``: (heading, function of a row) pairs; the last column is not padded."""
    cells = [[heading for heading, _ in columns]]
    for row in rows:
        cells.append(["-" if (v := get(row)) in (None, "") else str(v) for _, get in columns])
    widths = [max(_width(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        padded = [cell + " " * (widths[i] - _width(cell)) for i, cell in enumerate(line[:-1])]
        out.write("  ".join(padded + [line[-1]]).rstrip() + "\n")


class Progress:
    """``progress(done, total)`` for uploads and downloads. On a terminal one line redrawn
    in place (at most ten times a second); elsewhere, when asked for, a line per 10 %."""

    def __init__(self, label, out=sys.stderr, enabled=None, clock=time.monotonic):
        self._label = label
        self._out = out
        self._tty = out.isatty()
        self._enabled = self._tty if enabled is None else enabled
        self._clock = clock
        self._started = clock()
        self._first = None
        self._last_draw = 0.0
        self._last_step = -1
        self._drawn = False

    def __call__(self, done, total):
        if not self._enabled:
            return
        now = self._clock()
        if self._first is None:
            self._first = done
            if done:
                self._out.write(f"{self._label}: resuming, {size(done)} of {size(total)} already sent\n")
        percent = 100 if not total else min(100, int(done * 100 / total))
        elapsed = max(now - self._started, 1e-6)
        rate = f"{size((done - self._first) / elapsed)}/s"
        if self._tty:
            if done < total and now - self._last_draw < 0.1:
                return
            self._last_draw = now
            columns = shutil.get_terminal_size((80, 20)).columns
            bar_width = max(10, min(30, columns - 60))
            filled = bar_width * percent // 100
            bar = "#" * filled + "." * (bar_width - filled)
            self._out.write(f"\r{self._label} [{bar}] {percent:3d}% {size(done)}/{size(total)} {rate}\033[K")
            self._drawn = True
        else:
            step = percent // 10
            if step == self._last_step:
                return
            self._last_step = step
            self._out.write(f"{self._label}: {percent}% {size(done)}/{size(total)} {rate}\n")
        self._out.flush()

    def close(self):
        """Ends the redrawn line, so what follows starts on its own."""
        if self._drawn:
            self._out.write("\n")
            self._out.flush()
            self._drawn = False
