"""Command lines: how one is split into argv, whether its program exists, and how a value
is quoted into one so that the shell reads it back as one unchanged word."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Sequence
from typing import Any

_SHELL_CHARS = frozenset("|&;<>()$`\\*?[#~\n")


def command_argv(command: str | Sequence[str]) -> list[str]:
    """argv for a command: split directly when it has no shell syntax (saving a /bin/sh
    per task), else ``/bin/sh -c command``."""
    if not isinstance(command, str):
        return [str(a) for a in command]
    if _SHELL_CHARS.isdisjoint(command):
        argv = _split_plain(command)
        if argv and "=" not in argv[0]:
            return argv
    return ["/bin/sh", "-c", command]


_PLAIN_PIECE = re.compile(r"""[^ \t\r'"]+|'[^']*'|"[^"]*"|[ \t\r]+|['"]""")


def _split_plain(command: str) -> list[str] | None:
    """``shlex.split(command)`` for a command without shell syntax, where only quotes and
    blanks matter, in linear time: shlex takes time quadratic in the length of a word, and
    a 1 MB command took half a minute. None when a quote is not closed."""
    argv: list[str] = []
    word: list[str] | None = None
    for piece in _PLAIN_PIECE.findall(command):
        if piece[0] in " \t\r":
            if word is not None:
                argv.append("".join(word))
            word = None
        elif piece in ("'", '"'):
            return None
        else:
            word = word if word is not None else []
            word.append(piece[1:-1] if piece[0] in "'\"" else piece)
    if word is not None:
        argv.append("".join(word))
    return argv


def direct_program(command: str | Sequence[str]) -> str | None:
    """The program a command runs, or None when a shell runs it (we cannot tell)."""
    argv = command_argv(command)
    return None if argv[:2] == ["/bin/sh", "-c"] and isinstance(command, str) else argv[0]


def resolve_program(program: str, run_dir: str | None) -> str | None:
    """The executable file ``program`` names (PATH lookup without a slash), or None."""
    if os.sep in program:
        path = program if os.path.isabs(program) or not run_dir \
            else os.path.join(run_dir, program)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return shutil.which(program)


def command_line(executable: Any, args: Sequence[object]) -> str | list[str]:
    """A command task's command line (a string, or a list of arguments) with its ``args``
    appended, quoted when the command is a string."""
    if not args:
        return executable if isinstance(executable, str) else list(executable)
    if isinstance(executable, str):
        return executable + " " + " ".join(shlex.quote(str(a)) for a in args)
    return [*executable, *(str(a) for a in args)]


# -- values substituted into a shell command ---------------------------------------------------

WORD, SINGLE, DOUBLE = "word", "single", "double"
#: Frames of the shell's grammar in which no quoting of ours is sure to keep a value data.
_UNQUOTABLE = {"`": "backquotes", "${": "a ${...} expansion", "$((": "an arithmetic expansion",
               "#": "a comment"}
_WORD_START = frozenset(" \t\n;&|()")
#: Characters that can change the shell's quoting state; text without them leaves it as is.
SHELL_SYNTAX = frozenset("'\"\\`$#(){}<\n")
#: What ends or expands inside "...": each is escaped with a backslash there.
_DOUBLE_SPECIAL = re.compile(r'[\\"$`]')


def hole_contexts(pieces: Sequence[str]) -> list[str]:
    """The shell's quoting state at each gap between ``pieces`` of a command line: ``WORD``
    (unquoted, also inside ``$(...)``), ``SINGLE`` or ``DOUBLE`` (inside such quotes), or
    a phrase naming a place where a value cannot be quoted reliably (backquotes,
    ``${...}``, ``$((...))``, a comment, a here-document, right after a backslash). What
    fills a gap is taken to leave the state unchanged, as a value quoted by
    :func:`quote_for` does."""
    stack: list[str] = []
    heredoc = False
    prev = " "
    contexts = []
    for n, text in enumerate(pieces):
        i = 0
        while i < len(text):
            i, prev, heredoc = _lex(text, i, prev, stack, heredoc)
        if n < len(pieces) - 1:
            escaped = i > len(text)
            contexts.append("a backslash escape" if escaped else _context(stack, heredoc))
            prev = "x"
    return contexts


def _lex(text: str, i: int, prev: str, stack: list[str], heredoc: bool) -> tuple[int, str, bool]:
    """One step of a small POSIX sh lexer: enough to track quotes and nesting."""
    c = text[i]
    top = stack[-1] if stack else ""
    if top == "'":
        if c == "'":
            stack.pop()
        return i + 1, c, heredoc
    if top == "#":
        if c == "\n":
            stack.pop()
        return i + 1, c, heredoc
    if c == "\\":
        return i + 2, "x", heredoc
    if c == "$" and text.startswith("$((", i):
        stack.append("$((")
        return i + 3, "(", heredoc
    if c == "$" and text.startswith(("$(", "${"), i):
        stack.append("(" if text[i + 1] == "(" else "${")
        return i + 2, "(", heredoc
    if c == "`":
        if top == "`":
            stack.pop()
        else:
            stack.append("`")
        return i + 1, c, heredoc
    if top == '"':
        if c == '"':
            stack.pop()
        return i + 1, c, heredoc
    if c in "'\"":
        stack.append(c)
    elif c == "(":
        stack.append("(")
    elif c == ")" and top in ("(", "$(("):
        stack.pop()
        if top == "$((" and text.startswith(")", i + 1):
            return i + 2, c, heredoc
    elif c == "}" and top == "${":
        stack.pop()
    elif c == "#" and prev in _WORD_START and top not in ("${", "$(("):
        stack.append("#")
    elif c == "<" and text.startswith("<<", i):
        return i + 2, c, True
    return i + 1, c, heredoc


def _context(stack: list[str], heredoc: bool) -> str:
    if heredoc:
        return "a here-document"
    for frame in reversed(stack):
        if frame in _UNQUOTABLE:
            return _UNQUOTABLE[frame]
    top = stack[-1] if stack else ""
    return SINGLE if top == "'" else DOUBLE if top == '"' else WORD


def quote_for(context: str, value: str) -> str:
    """``value`` written so that the shell reads it back unchanged, as one word, in the
    quoting ``context`` found by :func:`hole_contexts`."""
    if context == WORD:
        return shlex.quote(value)
    if context == SINGLE:
        return value.replace("'", "'\\''")
    if context == DOUBLE:
        return _DOUBLE_SPECIAL.sub(r"\\\g<0>", value)
    raise ValueError(f"a value cannot be quoted inside {context}")
