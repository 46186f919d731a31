"""The `unimodal chat` read-eval-print loop over a `ChatEngine`.

Reads one request per line from stdin (so a file of commands can be piped in), prints each reply
to stdout and progress to stderr. End of input (Ctrl-D, or the end of a pipe) and Ctrl-C at the
prompt end the chat; Ctrl-C while a turn runs abandons that turn only. The session folder is
complete after every turn, so there is nothing to save on the way out.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from unimodal.chat.engine import ChatEngine

BANNER = "unimodal chat: /image PROMPT to draw, /critique, /best N, /ask PATH QUESTION, /help; Ctrl-D to leave"


class StatusLine:
    """Progress on stderr: a live line with the elapsed time on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream = stream or sys.stderr
        self.live = stream.isatty()
        self._message = ""
        self._start = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, message: str) -> None:
        if not self._message:
            self._start = time.monotonic()
        self._message = message
        if not self.live:
            print(f"... {message}", file=self.stream, flush=True)
        elif self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(0.2):
            self.stream.write(f"\r\033[K... {self._message} ({time.monotonic() - self._start:.1f} s)")
            self.stream.flush()

    def done(self) -> float:
        """Stop and clear the line; returns the seconds since the first update (0 if none)."""
        elapsed = time.monotonic() - self._start if self._message else 0.0
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.stream.write("\r\033[K")
            self.stream.flush()
        self._message = ""
        return elapsed


def _read_line(stdin: TextIO, prompt: str) -> str | None:
    """The next line, or None at end of input. A terminal gets a prompt and line editing."""
    if stdin is sys.stdin and stdin.isatty():
        try:
            return input(prompt)
        except EOFError:
            return None
    line = stdin.readline()
    return None if line == "" else line


def run_repl(engine: ChatEngine, stdin: TextIO | None = None, stdout: TextIO | None = None,
             status: StatusLine | None = None) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    status = status or StatusLine()
    engine.progress = status.update
    interactive = stdin.isatty()
    if interactive:
        print(BANNER, file=stdout)
    while True:
        try:
            line = _read_line(stdin, "> ")
        except KeyboardInterrupt:
            print(file=stdout)
            break
        if line is None:
            break
        try:
            result = engine.handle(line)
        except KeyboardInterrupt:
            status.done()
            print("interrupted: that turn was not recorded", file=stdout, flush=True)
            continue
        elapsed = status.done()
        if result is None:
            continue
        print(result.text, file=stdout, flush=True)
        if elapsed >= 0.05 and interactive:
            print(f"({elapsed:.1f} s)", file=status.stream)
        if result.quit:
            break
    if engine.store is not None:
        print(f"session saved in {engine.store.root}", file=status.stream)
    return 0
