"""A GNU make Makefile read the way make reads it: logical lines, rules, recipes, conditionals.

``init`` removes the rules of the targets it replaces and writes its own block into a Makefile
patchflow does not own. A Makefile is not a list of lines: make reads *logical* lines (a
backslash before the newline continues a line, also a comment's), a recipe is every line that
begins with the recipe prefix after a rule (blank and comment lines and conditional directives
inside it do not end it; any other line does), ``define ... endef`` bodies are text, and
``.RECIPEPREFIX`` changes the prefix for the lines that follow. This module follows GNU make 4.3
(``read.c``: ``readline``, ``eval``, ``do_define``, ``parse_var_assignment``; the manual's
chapters 3.1 *What Makefiles Contain*, 4 *Writing Rules*, 5.1 *Recipe Syntax*, 6.5 *Setting
Variables*, 6.11 *Target-specific Variable Values*, 7 *Conditional Parts of Makefiles*):

* lines end at ``\\n``; a ``\\r`` before it belongs to the line ending (make drops it), so a CRLF
  file is read like an LF one and is written back with its own line endings;
* a line whose text ends with an odd number of backslashes continues on the next line;
* ``#`` starts a comment outside a recipe unless escaped (``\\#``) or inside ``$(...)``/``${...}``;
* a line is a variable assignment when, after the modifiers ``export``/``override``/``private``/
  ``unexport``, a name without spaces is followed by ``=``, ``:=``, ``::=``, ``:::=``, ``+=``, ``?=``
  or ``!=`` (``define``/``undefine`` too); a target-specific variable is ``targets: assignment``;
* conditionals (``ifdef``/``ifndef``/``ifeq``/``ifneq``/``else``/``endif``) are read on every
  branch: which branch make takes depends on variables, so a recipe line is attributed to every
  rule it may belong to (:attr:`Logical.owners`), and an edit that would depend on the branch is
  refused instead of guessed.

:func:`parse_makefile` reads a text; :func:`patchflow.makefile_edit.remove_targets` returns it
without the rules of some targets (and their target-specific variables), byte for byte the same
elsewhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from patchflow.errors import ConfigError

BLANK = "blank"
COMMENT = "comment"
RECIPE = "recipe"
RULE = "rule"
TARGET_VAR = "target-variable"
ASSIGN = "assignment"
DEFINE = "define"
CONDITIONAL = "conditional"
INCLUDE = "include"
DIRECTIVE = "directive"
OTHER = "other"

DEFAULT_PREFIX = "\t"
_MODIFIERS = ("export", "override", "private", "unexport")
_CONDITIONALS = ("ifdef", "ifndef", "ifeq", "ifneq", "else", "endif")
BLANKS = " \t\f\v"


class MakefileError(ConfigError):
    """A Makefile init cannot edit safely (or that GNU make itself would refuse); names the line."""


@dataclass(frozen=True)
class Physical:
    """One physical line: ``text`` without its line ending, ``eol`` ``"\\n"``, ``"\\r\\n"`` or ``""``
    (the last line of a file without a final newline)."""

    text: str
    eol: str


@dataclass(frozen=True)
class Word:
    """A target name on a rule line: its text, the physical line holding it and its columns."""

    text: str
    line: int
    start: int
    end: int


@dataclass
class Logical:
    """One logical line (physical lines ``first``..``last`` inclusive) and what make reads in it.

    ``kind`` is one of the module's constants. A ``define`` covers its body and ``endef``.
    Rules and target-specific variables have ``targets`` (``dynamic`` when a target name holds a
    variable reference, so its names are known only to make) and ``rule`` (their index in
    :attr:`Makefile.rules`); ``double_colon`` marks ``::`` rules. Recipe lines have ``owners``: the
    rules they may belong to (None: on some branch of the conditionals, none).
    """

    first: int
    last: int
    kind: str
    text: str = ""
    targets: tuple[Word, ...] = ()
    dynamic: bool = False
    double_colon: bool = False
    rule: int | None = None
    owners: frozenset[int | None] = frozenset()
    names: tuple[str, ...] = ()  # include: the file names; conditional: the directive
    prefix: str = DEFAULT_PREFIX  # the recipe prefix in effect when make reads this line
    context: frozenset[int | None] = frozenset({None})  # the rules a recipe line here could belong to


@dataclass
class Conditional:
    """An ``if...endif`` block: the logical indexes of its ``if``, its ``else`` lines and ``endif``."""

    start: int
    elses: list[int] = field(default_factory=list)
    end: int = -1


@dataclass
class Makefile:
    """A parsed Makefile: its physical and logical lines, rules, conditionals, and the recipe
    prefix in effect at its end (``prefix``)."""

    physical: list[Physical]
    lines: list[Logical]
    rules: list[int]  # logical index of each rule / target-specific variable line
    conditionals: list[Conditional]
    prefix: str
    prefix_line: int | None  # 1-based line of the last .RECIPEPREFIX assignment (None: never set)

    def eol(self) -> str:
        """The file's line ending: the most common one (CRLF or LF; LF for an empty file)."""
        crlf = sum(1 for p in self.physical if p.eol == "\r\n")
        lf = sum(1 for p in self.physical if p.eol == "\n")
        return "\r\n" if crlf > lf else "\n"

    def targets(self, *, kinds: tuple[str, ...] = (RULE, TARGET_VAR)) -> dict[str, list[int]]:
        """Literal target names of rules (and target-specific variables) -> their logical indexes."""
        found: dict[str, list[int]] = {}
        for index in self.rules:
            line = self.lines[index]
            if line.kind in kinds:
                for word in line.targets:
                    if "$" not in word.text:
                        found.setdefault(word.text, []).append(index)
        return found

    def dynamic_rules(self) -> list[int]:
        """Logical indexes of rules whose targets come from variable references (make alone knows
        their names)."""
        return [i for i in self.rules if self.lines[i].dynamic]

    def line_number(self, logical: int) -> int:
        """The 1-based line number of a logical line's first physical line."""
        return self.lines[logical].first + 1


def split_physical(text: str) -> list[Physical]:
    """``text`` as physical lines, each with its own line ending (nothing is lost: joining
    ``text + eol`` of every line gives ``text`` back)."""
    out: list[Physical] = []
    pos = 0
    while pos < len(text):
        nl = text.find("\n", pos)
        if nl < 0:
            out.append(Physical(text[pos:], ""))
            break
        line = text[pos:nl]
        if line.endswith("\r"):
            out.append(Physical(line[:-1], "\r\n"))
        else:
            out.append(Physical(line, "\n"))
        pos = nl + 1
    return out


def _continues(text: str) -> bool:
    """True when ``text`` ends with an odd number of backslashes (make's line continuation)."""
    count = len(text) - len(text.rstrip("\\"))
    return count % 2 == 1


def _skip_reference(text: str, pos: int) -> int:
    """Given ``text[pos] == '$'``, the index just after the variable reference it starts
    (``$(...)``/``${...}`` balanced on their own bracket, ``$x`` one character)."""
    if pos + 1 >= len(text):
        return pos + 1
    opener = text[pos + 1]
    if opener not in "({":
        return pos + 2
    closer = ")" if opener == "(" else "}"
    depth = 0
    i = pos + 1
    while i < len(text):
        ch = text[i]
        if ch == opener:
            depth += 1
        elif ch == closer:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)


def _find_unquoted(text: str, stops: str) -> int:
    """Index of the first character of ``stops`` in ``text`` outside variable references and
    not escaped by an odd number of backslashes; -1 when there is none."""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "$":
            i = _skip_reference(text, i)
            continue
        if ch in stops:
            backslashes = len(text[:i]) - len(text[:i].rstrip("\\"))
            if backslashes % 2 == 0:
                return i
        i += 1
    return -1


def collapse(raw: str) -> str:
    """A logical line outside a recipe as make reads it: each backslash-newline and the
    whitespace around it become one space."""
    return re.sub(r"[ \t]*\\\n[ \t]*", " ", raw)


def strip_comment(text: str) -> str:
    """``text`` without its comment (an unescaped ``#`` outside variable references)."""
    hash_at = _find_unquoted(text, "#")
    return text if hash_at < 0 else text[:hash_at]


def _words(text: str) -> list[str]:
    return text.split()


def _assignment(text: str, *, allow_define: bool = True) -> tuple[str, str, str] | None:
    """``(name, operator, value)`` when ``text`` (comment removed, collapsed) is a variable
    assignment as make's ``parse_var_assignment`` reads it (modifiers skipped; ``define`` and
    ``undefine`` give the operator ``define``/``undefine``); None otherwise."""
    rest = text.lstrip(BLANKS)
    while True:
        word = rest.split(None, 1)[0] if rest.split() else ""
        if word in _MODIFIERS:
            after = rest[len(word) :]
            if not after[:1] or after[:1] not in BLANKS:
                break
            rest = after.lstrip(BLANKS)
            if not rest:
                return None
            continue
        if allow_define and word in ("define", "undefine") and (len(rest) == len(word) or rest[len(word)] in BLANKS):
            name = rest[len(word) :].strip()
            return (name.split()[0] if name.split() else "", word, "")
        break
    i = 0
    seen_blank = False
    name_end = -1
    while i < len(rest):
        ch = rest[i]
        if ch in BLANKS:
            if seen_blank:
                return None
            name_end = i
            while i < len(rest) and rest[i] in BLANKS:
                i += 1
            if i >= len(rest):
                return None
            seen_blank = True
            ch = rest[i]
        op = None
        if ch == "=":
            op = "="
        elif ch == ":":
            for candidate in (":::=", "::=", ":="):
                if rest.startswith(candidate, i):
                    op = candidate
                    break
            if op is None:
                return None  # a colon that is not part of an assignment operator: a rule
        elif ch in "+?!" and rest.startswith("=", i + 1):
            op = ch + "="
        elif ch == "$":
            if seen_blank:
                return None
            i = _skip_reference(rest, i)
            continue
        if op is not None:
            name = rest[: name_end if seen_blank else i].strip()
            return (name, op, rest[i + len(op) :].lstrip(BLANKS))
        if seen_blank:
            return None
        i += 1
    return None


def _first_word_is(text: str, word: str) -> bool:
    """True when ``text`` (leading blanks skipped) starts with ``word`` followed by a blank or its end."""
    stripped = text.lstrip(BLANKS)
    return stripped.startswith(word) and (len(stripped) == len(word) or stripped[len(word)] in BLANKS)


def _directive(text: str) -> str | None:
    """The conditional directive a line starts with (``ifeq``... ``else``, ``endif``), or None
    (make needs a blank after the word: ``ifeq(a,b)`` is no conditional)."""
    return next((word for word in _CONDITIONALS if _first_word_is(text, word)), None)


def _target_words(physical: list[Physical], first: int, raw_end: int) -> tuple[Word, ...]:
    """The whitespace-separated words of the logical line starting at physical line ``first``,
    up to offset ``raw_end`` of its raw text (physical texts joined with ``\\n``)."""
    words: list[Word] = []
    offset = 0
    line = first
    while offset < raw_end:
        text = physical[line].text
        limit = min(len(text), raw_end - offset)
        cut = limit - 1 if limit == len(text) and _continues(text) else limit  # not the continuation backslash
        for match in re.finditer(r"[^ \t\f\v]+", text[:cut]):
            words.append(Word(match.group(), line, match.start(), match.end()))
        offset += len(text) + 1
        line += 1
    return tuple(words)


class _Reader:
    """One pass over the physical lines, keeping make's reading state on every conditional branch."""

    def __init__(self, text: str) -> None:
        self.physical = split_physical(text)
        self.lines: list[Logical] = []
        self.rules: list[int] = []
        self.conditionals: list[Conditional] = []
        self.prefix = DEFAULT_PREFIX
        self.prefix_value = ""
        self.prefix_line: int | None = None
        self.states: set[int | None] = {None}
        self.frames: list[tuple[Conditional, set[int | None], list[set[int | None]], bool]] = []

    def logical_end(self, start: int) -> int:
        """The last physical line of the logical line starting at ``start``."""
        end = start
        while _continues(self.physical[end].text) and end + 1 < len(self.physical):
            end += 1
        return end

    def raw(self, first: int, last: int) -> str:
        return "\n".join(p.text for p in self.physical[first : last + 1])

    def fail(self, line: int, message: str, hint: str) -> MakefileError:
        return MakefileError(f"Makefile line {line + 1}: {message}", hint)

    def read(self) -> Makefile:
        i = 0
        n = len(self.physical)
        while i < n:
            last = self.logical_end(i)
            raw = self.raw(i, last)
            rule_states = {s for s in self.states if s is not None}
            if raw.startswith(self.prefix) and rule_states:
                self.add(Logical(i, last, RECIPE, raw, owners=frozenset(self.states)))
                # on a branch with no rule the line is read as an ordinary one: make refuses a
                # recipe line there, so the states stay as they are
                i = last + 1
                continue
            i = self.ordinary(i, last, raw)
        if self.frames:
            start = self.frames[-1][0].start
            raise self.fail(
                self.lines[start].first,
                "this conditional has no `endif` (make stops with \"missing 'endif'\").",
                "Fix the Makefile (make cannot read it), then run init again.",
            )
        return Makefile(self.physical, self.lines, self.rules, self.conditionals, self.prefix, self.prefix_line)

    def add(self, line: Logical) -> int:
        line.prefix = self.prefix
        line.context = frozenset(self.states)
        self.lines.append(line)
        return len(self.lines) - 1

    def ordinary(self, first: int, last: int, raw: str) -> int:
        """Read the non-recipe logical line ``first``..``last``; return the next physical index."""
        text = collapse(raw)
        body = strip_comment(text)
        if not body.strip(BLANKS + "\r"):
            self.add(Logical(first, last, COMMENT if "#" in text else BLANK, raw))
            return last + 1
        assignment = _assignment(body)
        if assignment is not None:
            name, op, value = assignment
            if op == "define":
                return self.define(first, last, raw, name)
            self.add(Logical(first, last, ASSIGN, raw, names=(name,)))
            if name == ".RECIPEPREFIX" and op != "undefine":
                self.recipe_prefix(first, op, value)
            self.states = {None}
            return last + 1
        directive = _directive(body)
        if directive is not None:
            self.conditional(first, last, raw, directive)
            return last + 1
        words = _words(body)
        if words[0] in ("include", "-include", "sinclude"):
            self.add(Logical(first, last, INCLUDE, raw, names=tuple(words[1:])))
            self.states = {None}
            return last + 1
        if words[0] in ("export", "unexport", "vpath", "load", "-load"):
            self.add(Logical(first, last, DIRECTIVE, raw))
            self.states = {None}
            return last + 1
        self.rule_line(first, last, raw)
        return last + 1

    def recipe_prefix(self, first: int, op: str, value: str) -> None:
        """Follow an assignment of ``.RECIPEPREFIX`` (make takes the first character of the
        value it stores: unexpanded for ``=``, expanded for ``:=``)."""
        hint = (
            "Set .RECIPEPREFIX with a literal value outside conditionals (e.g. `.RECIPEPREFIX = >`), "
            "or remove it, then run init again."
        )
        if self.frames:
            raise self.fail(
                first,
                ".RECIPEPREFIX is set inside a conditional: which recipe prefix is in effect "
                "depends on how make evaluates it.",
                hint,
            )
        value = value.rstrip(BLANKS)
        if op == "?=":
            return  # .RECIPEPREFIX is always defined (empty by default): ?= never sets it
        if op == "!=":
            raise self.fail(first, ".RECIPEPREFIX != runs a shell command to get its value.", hint)
        if op == "+=":
            value = f"{self.prefix_value} {value}" if self.prefix_value else value
        elif op != "=" and "$" in value:
            raise self.fail(first, f"`.RECIPEPREFIX {op} {value}` needs make to expand it.", hint)
        self.prefix_value = value
        self.prefix = value[0] if value else DEFAULT_PREFIX
        self.prefix_line = first + 1

    def define(self, first: int, last: int, raw: str, name: str) -> int:
        """A ``define`` and its body up to the matching ``endef`` (nested ``define`` lines count),
        as one logical line of kind DEFINE."""
        if name == ".RECIPEPREFIX":
            raise self.fail(
                first,
                "`define .RECIPEPREFIX` is not supported by init.",
                "Use `.RECIPEPREFIX = >` instead, then run init again.",
            )
        depth = 1
        i = last + 1
        while i < len(self.physical):
            end = self.logical_end(i)
            line = self.raw(i, end)
            if not line.startswith(self.prefix):
                if _first_word_is(line, "define"):
                    depth += 1
                elif _first_word_is(line, "endef"):
                    depth -= 1
                    if depth == 0:
                        self.add(Logical(first, end, DEFINE, self.raw(first, end), names=(name,)))
                        self.states = {None}
                        return end + 1
            i = end + 1
        raise self.fail(
            first,
            f"`define {name}` has no `endef` (make stops with \"missing 'endef'\").",
            "Fix the Makefile (make cannot read it), then run init again.",
        )

    def conditional(self, first: int, last: int, raw: str, directive: str) -> None:
        index = self.add(Logical(first, last, CONDITIONAL, raw, names=(directive,)))
        if directive.startswith("if"):
            block = Conditional(index)
            self.conditionals.append(block)
            self.frames.append((block, set(self.states), [], False))
            return
        if not self.frames:
            raise self.fail(
                first,
                f"`{directive}` without a matching `if` (make stops: \"extraneous '{directive}'\").",
                "Fix the Makefile (make cannot read it), then run init again.",
            )
        block, saved, done, has_else = self.frames[-1]
        if directive == "else":
            block.elses.append(index)
            plain = not collapse(strip_comment(raw)).strip(BLANKS)[4:].strip(BLANKS)
            self.frames[-1] = (block, saved, [*done, set(self.states)], has_else or plain)
            self.states = set(saved)
            return
        block.end = index
        self.frames.pop()
        merged: set[int | None] = set(self.states)
        for branch in done:
            merged |= branch
        if not has_else:
            merged |= saved
        self.states = merged

    def rule_line(self, first: int, last: int, raw: str) -> None:
        """A line that is neither an assignment nor a directive: a rule, a target-specific
        variable, or something only make can read (a bare function call such as ``$(info ...)``)."""
        stop = _find_unquoted(raw, ":;#=")
        if stop < 0 or raw[stop] != ":":
            self.add(Logical(first, last, OTHER, raw))
            self.states = {None}
            return
        colon = stop
        end_targets = colon - 1 if colon > 0 and raw[colon - 1] == "&" else colon
        words = _target_words(self.physical, first, end_targets)
        double = raw.startswith("::", colon)
        after = raw[colon + (2 if double else 1) :]
        semi = _find_unquoted(after, ";#")
        prerequisites = collapse(after if semi < 0 else after[:semi])
        is_var = _assignment(prerequisites, allow_define=False) is not None
        kind = TARGET_VAR if is_var and (semi < 0 or after[semi] == "#") else RULE
        index = self.add(
            Logical(
                first,
                last,
                kind,
                raw,
                targets=words,
                dynamic=any("$" in w.text for w in words),
                double_colon=double,
                rule=len(self.rules),
            )
        )
        self.rules.append(index)
        self.states = {len(self.rules) - 1} if kind == RULE else {None}


def parse_makefile(text: str) -> Makefile:
    """Read ``text`` as GNU make reads a Makefile (see the module docstring).

    Raises:
        MakefileError: make itself would refuse the file (an ``if`` without ``endif``, a
            ``define`` without ``endef``), or ``.RECIPEPREFIX`` is set in a way only make can
            evaluate (inside a conditional, from a variable with ``:=``, by a shell command).
    """
    return _Reader(text).read()
