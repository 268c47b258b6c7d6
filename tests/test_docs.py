"""Every `edgebench ...` command line the README and docs/ quote names a command and options
that exist: each goes through the real CLI parser (`<command path> --help`, nothing runs), and
each `--flag` it uses must be one of that command's options.

Quoted means in a fenced code block or in inline code. A line may call the program as
`edgebench`, `.venv/bin/edgebench` (any `.../bin/edgebench`) or `python -m harness`, continue
over `\\`-ended lines, and hold placeholders (`<run_id>`, `RUN`, `[--devices NAME,...]`, `...`).
A path such as `~/.cache/edgebench` or `edgebench-probe` is not a command line.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from harness.cli import app

from .conftest import REPO

PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
FENCE = re.compile(r"^(```|~~~)")
INLINE = re.compile(r"`([^`]+)`")
# Where a shell command ends: what follows is another program, a redirection or a closing brace.
SHELL_ENDS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>&1", "}", ")"}


@dataclass(frozen=True)
class Quoted:
    where: str  # page:line
    text: str  # the line as quoted (continuations joined)


def quoted_lines(page: Path) -> list[Quoted]:
    return quoted_in(page.read_text(encoding="utf-8"), page.relative_to(REPO).as_posix())


def quoted_in(markdown: str, name: str) -> list[Quoted]:
    """Each code-block line and each inline code span of a Markdown text, with its line number."""
    found: list[Quoted] = []
    lines = markdown.splitlines()
    prose: list[tuple[int, str]] = []
    fence: str | None = None
    pending, start = "", 0
    for number, line in enumerate(lines, 1):
        opened = FENCE.match(line.strip())
        if fence is None and opened:
            fence = opened.group(1)
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
                continue
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            found.append(Quoted(f"{name}:{start}", pending + line))
            pending = ""
            continue
        prose.append((number, line))
    # inline code may wrap over a line break inside a paragraph: search the prose as one text
    text = "\n".join(line for _, line in prose)
    offsets = [0]
    for _, line in prose:
        offsets.append(offsets[-1] + len(line) + 1)
    for match in INLINE.finditer(text):
        index = next(i for i, end in enumerate(offsets[1:]) if match.start() < end)
        found.append(Quoted(f"{name}:{prose[index][0]}", match.group(1).replace("\n", " ")))
    return found


def _is_program(tokens: list[str], i: int) -> bool:
    word = tokens[i]
    if word == "edgebench" or word.endswith("/bin/edgebench"):
        return True
    return word == "harness" and i >= 2 and tokens[i - 1] == "-m" and "python" in tokens[i - 2]


def _tokens(text: str) -> list[str]:
    text = re.sub(r"<[^<>]*>", "PLACEHOLDER", text)  # <run_id>, <first run>: one word each
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote in prose-like code: words are enough here
        return text.split()


def command_lines(quoted: Quoted) -> list[list[str]]:
    """The argument lists after each `edgebench` in a quoted line, up to where its command ends."""
    tokens = _tokens(quoted.text)
    found = []
    for i in range(len(tokens)):
        if not _is_program(tokens, i):
            continue
        args = []
        for word in tokens[i + 1:]:
            if word in SHELL_ENDS:
                break
            ends = word.endswith(";")
            word = word.rstrip(";")
            if word:
                args.append(word)
            if ends:
                break
        found.append(args)
    return found


def _placeholder(word: str) -> bool:
    bare = word.strip("[]{}()")
    return (not bare or bare == "PLACEHOLDER" or "..." in bare or "…" in bare
            or re.fullmatch(r"[A-Z][A-Z0-9_]*(\|[A-Za-z0-9_]+)*", bare) is not None)


def problems(args: list[str]) -> tuple[list[str], list[str]]:
    """(the command path the arguments name, what is wrong with them). Options are checked
    against the command's click parameters; nothing is invoked."""
    command = typer.main.get_command(app)  # typer's own click (typer vendors it): groups by duck type
    path: list[str] = []
    rest = list(args)
    while hasattr(command, "commands") and rest:
        word = rest[0].strip("[]")
        if word.startswith("-") or _placeholder(rest[0]):
            break
        sub = command.commands.get(word)
        if sub is None:
            where = " ".join(["edgebench", *path])
            return path, [f"{where} has no command {word!r} (it has: {', '.join(sorted(command.commands))})"]
        command, path = sub, [*path, word]
        rest.pop(0)
    options = {name: param for param in command.params if param.param_type_name == "option"
               for name in (*param.opts, *param.secondary_opts)}
    wrong = []
    skip_value = False
    for raw in rest:
        word = raw.strip("[]")
        if skip_value:  # the value of the option before: may itself start with "-" (-DGGML_CUDA=ON)
            skip_value = False
            continue
        if not word.startswith("-") or word in ("-", "--") or re.fullmatch(r"-\d[\d.]*%?", word):
            continue
        name, has_value, _ = word.partition("=")
        if name == "--help":
            continue
        param = options.get(name)
        if param is None:
            where = " ".join(["edgebench", *path])
            wrong.append(f"{where} has no option {name} (it has: {', '.join(sorted(options)) or 'none'})")
            continue
        skip_value = not param.is_flag and not param.count and not has_value and not raw.endswith("]")
    return path, wrong


def all_commands() -> list[tuple[str, list[str]]]:
    return [(f"{q.where} {' '.join(['edgebench', *args])}", args)
            for page in PAGES for q in quoted_lines(page) for args in command_lines(q)]


COMMANDS = all_commands()


def test_the_pages_are_read():
    """Guards the checks below against passing on nothing found."""
    assert REPO / "README.md" in PAGES and len(PAGES) >= 7, PAGES
    named = {" ".join(problems(args)[0]) for _, args in COMMANDS}
    assert len(COMMANDS) >= 40 and {"run", "compare", "lab run", "lab schedule add", "results push", "worker"} <= named, sorted(named)


def test_the_readme_starts_with_the_two_commands():
    """CI and other tools run these two lines as they stand."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first_block = text.split("```", 2)[1]
    assert first_block == ('bash\nscripts/setup.sh && .venv/bin/edgebench run\n'
                           'scripts/setup.sh --test && .venv/bin/python -m pytest -m "slow or not slow"\n')
    assert len(text.splitlines()) <= 210


def test_the_checker_finds_what_does_not_exist():
    """A misspelt command, subcommand or option is reported; placeholders and values are not."""
    def check(line: str) -> list[str]:
        [args] = command_lines(Quoted("x", line))
        return problems(args)[1]

    assert check("edgebench nosuch --help")
    assert check(".venv/bin/edgebench results nosuch")
    assert check("python -m harness run --no-such-flag")
    assert check("edgebench compare A B --treshold 5")
    assert check("edgebench lab schedule add --inventory F --cronn '0 2 * * *'")
    assert not check("edgebench run --set threads=1,2 --build-flag -DGGML_CUDA=ON --resume <run_id> --precision 2%")
    assert not check("edgebench lab submit --inventory FILE [--devices NAME,...] [--repeat R] --model M1")
    assert not check("{ /opt/x/.venv/bin/edgebench lab run --inventory f.toml --model default; } >> log 2>&1")
    assert not check("edgebench results export RUN --artifacts DIR")
    assert command_lines(Quoted("x", "~/.cache/edgebench and edgebench-probe")) == []


def test_continuations_and_wrapped_inline_code_are_joined():
    page = ("Run `edgebench results\nshow --json` or:\n\n```bash\nedgebench run --suite quick \\\n"
            "  --no-such-flag   # a comment\n```\n")
    found = [(q.where, args) for q in quoted_in(page, "p.md") for args in command_lines(q)]
    assert found == [("p.md:5", ["run", "--suite", "quick", "--no-such-flag"]), ("p.md:1", ["results", "show", "--json"])]
    assert problems(found[0][1])[1] and not problems(found[1][1])[1]


@pytest.mark.parametrize("where, args", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_every_quoted_command_exists(where, args):
    path, wrong = problems(args)
    assert not wrong, f"{where}: " + "; ".join(wrong)
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, f"{where}: `edgebench {' '.join(path)} --help` exited {result.exit_code}: {result.output}"
