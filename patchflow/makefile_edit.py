"""Edits of a parsed Makefile: the rules of some targets removed, everything else kept byte for byte.

:func:`remove_targets` takes out the rules (and target-specific variables) of some targets of a
Makefile read by :mod:`patchflow.makefile`, keeping what ``make`` with no goal builds
(:func:`default_goal`); an edit whose effect would depend on how make evaluates a conditional is
refused instead of guessed."""

from __future__ import annotations

from dataclasses import dataclass

from patchflow.makefile import (
    ASSIGN,
    BLANK,
    BLANKS,
    COMMENT,
    CONDITIONAL,
    INCLUDE,
    RECIPE,
    RULE,
    TARGET_VAR,
    Makefile,
    MakefileError,
    Word,
)


def _inside_conditional(mk: Makefile, index: int) -> bool:
    return any(block.start < index < block.end for block in mk.conditionals)


def default_goal(mk: Makefile) -> tuple[str, int] | None:
    """The target ``make`` with no goal builds, and the logical index of the rule that makes it so:
    the first target of the first rule that is not a pattern and does not start with ``.`` (unless
    it holds a ``/``), as make decides. None when the Makefile sets ``.DEFAULT_GOAL`` itself, or
    when only make can tell (an ``include`` or a rule whose targets come from variables before it,
    or the first such rule inside a conditional)."""
    if any(ln.kind == ASSIGN and ln.names[:1] == (".DEFAULT_GOAL",) for ln in mk.lines):
        return None
    for index, line in enumerate(mk.lines):
        if line.kind == INCLUDE or (line.kind == RULE and line.dynamic):
            return None
        if line.kind != RULE:
            continue
        for word in line.targets:
            if "%" not in word.text and (not word.text.startswith(".") or "/" in word.text):
                return None if _inside_conditional(mk, index) else (word.text, index)
    return None


@dataclass
class Removal:
    """What :func:`remove_targets` did: the new text, and one description per rule it removed or
    edited."""

    text: str
    changes: list[str]


def _removable_blocks(mk: Makefile, removed: set[int]) -> set[int]:
    """Logical indexes of conditional directives whose whole block holds only removed lines
    (and blank or comment lines), at least one of them removed; innermost first."""
    extra: set[int] = set()
    for block in sorted(mk.conditionals, key=lambda b: b.end - b.start):
        if block.end < 0:
            continue
        inner = [i for i in range(block.start + 1, block.end) if i not in block.elses]
        if not any(i in removed or i in extra for i in inner):
            continue
        if all(i in removed or i in extra or mk.lines[i].kind in (BLANK, COMMENT) for i in inner):
            extra.update({block.start, block.end, *block.elses, *inner})
    return extra


def remove_targets(mk: Makefile, names: set[str], *, keep: range | None = None) -> Removal:
    """``mk``'s text without the rules and target-specific variables of ``names``.

    A rule naming only such targets goes with its recipe (and the blank and comment lines inside
    the recipe, and conditional blocks left empty); a rule also naming other targets keeps them
    and its recipe, with only the names removed from its line. Blank lines right after a removed
    rule go too when a blank line precedes it (no run of blank lines is left). Every other byte
    stays, line endings included. Lines in ``keep`` (logical indexes, e.g. patchflow's own block)
    are not touched.

    Raises:
        MakefileError: a recipe line may belong to a removed rule or to another one depending on
            a conditional, or a line after a removed target-specific variable would join the
            recipe before it.
    """
    removed: set[int] = set()  # logical indexes
    edits: dict[int, list[Word]] = {}  # physical line -> words to drop
    changes: list[str] = []
    gone_rules: set[int] = set()
    for rule_no, index in enumerate(mk.rules):
        if keep is not None and index in keep:
            continue
        line = mk.lines[index]
        hit = [w for w in line.targets if w.text in names]
        if not hit:
            continue
        what = "target-specific variable" if line.kind == TARGET_VAR else ("rule ::" if line.double_colon else "rule")
        if len(hit) == len(line.targets):
            removed.add(index)
            gone_rules.add(rule_no)
            changes.append(f"line {line.first + 1}: removes the {what} of {', '.join(w.text for w in hit)}")
        else:
            for word in hit:
                edits.setdefault(word.line, []).append(word)
            kept = [w.text for w in line.targets if w.text not in names]
            changes.append(
                f"line {line.first + 1}: removes {', '.join(w.text for w in hit)} from the {what} of "
                f"{' '.join(kept)} (kept with its recipe)"
            )
    for index, line in enumerate(mk.lines):
        if line.kind != RECIPE or not (line.owners & gone_rules):
            continue
        if keep is not None and index in keep:
            continue
        if line.owners - gone_rules:
            raise MakefileError(
                f"Makefile line {line.first + 1}: this recipe line belongs to a rule init replaces or to "
                "another one, depending on how make evaluates the conditionals around it.",
                "Remove the old rule by hand (or move the conditional inside its recipe), then run init again.",
            )
        removed.add(index)
    # blank and comment lines inside a removed recipe belong to it
    for rule_no in gone_rules:
        start = mk.rules[rule_no]
        recipe = [i for i, ln in enumerate(mk.lines) if ln.kind == RECIPE and rule_no in ln.owners]
        if recipe:
            for i in range(start + 1, max(recipe)):
                if mk.lines[i].kind in (BLANK, COMMENT):
                    removed.add(i)
    removed |= _removable_blocks(mk, removed)
    # a target-specific variable ends the recipe before it: lines after it that begin with the
    # recipe prefix are read as ordinary lines; without it they would join that recipe
    for index in sorted(removed):
        line = mk.lines[index]
        if line.kind != TARGET_VAR or line.context == frozenset({None}):
            continue
        after = index + 1
        while after < len(mk.lines) and (after in removed or mk.lines[after].kind in (BLANK, COMMENT, CONDITIONAL)):
            follower = mk.lines[after]
            if after not in removed and follower.text.startswith(follower.prefix):
                if follower.kind == CONDITIONAL:
                    raise MakefileError(
                        f"Makefile line {follower.first + 1}: this conditional begins with the recipe prefix; "
                        f"without the target-specific variable above it (line {line.first + 1}) make would "
                        "read it as a recipe line.",
                        "Remove that target-specific variable by hand, then run init again.",
                    )
                removed.add(after)  # a blank or comment line: nothing for make either way
            after += 1
        if after < len(mk.lines) and after not in removed and mk.lines[after].text.startswith(mk.lines[after].prefix):
            raise MakefileError(
                f"Makefile line {mk.lines[after].first + 1}: this line begins with the recipe prefix; without the "
                f"target-specific variable above it (line {line.first + 1}) make would read it as a recipe line.",
                "Remove that target-specific variable by hand, then run init again.",
            )
    # `make` with no target keeps building what it built: when the rule that made a replaced
    # target the default goal goes, an explicit .DEFAULT_GOAL takes its place
    insert: dict[int, str] = {}
    goal = default_goal(mk)
    if goal is not None and goal[0] in names and (keep is None or goal[1] not in keep):
        rule_line = mk.lines[goal[1]]
        insert[rule_line.first] = f".DEFAULT_GOAL := {goal[0]}" + (mk.physical[rule_line.first].eol or mk.eol())
        changes.append(
            f"line {rule_line.first + 1}: adds `.DEFAULT_GOAL := {goal[0]}` (that rule made {goal[0]} what make "
            "builds with no target; patchflow's target keeps it so)"
        )
    # a removed paragraph takes its trailing blank lines when a blank line (or the file's start) precedes it
    order = sorted(removed)
    for index in order:
        if index + 1 in removed:
            continue
        run_start = index
        while run_start - 1 in removed:
            run_start -= 1
        if goal is not None and run_start <= goal[1] <= index:
            continue  # the .DEFAULT_GOAL line stands there: keep the paragraph's blank lines
        if run_start == 0 or mk.lines[run_start - 1].kind == BLANK:
            after = index + 1
            while after < len(mk.lines) and mk.lines[after].kind == BLANK and not (keep and after in keep):
                removed.add(after)
                after += 1
    gone_physical: set[int] = set()
    for index in removed:
        gone_physical.update(range(mk.lines[index].first, mk.lines[index].last + 1))
    out: list[str] = []
    for number, physical in enumerate(mk.physical):
        out.append(insert.get(number, ""))
        if number in gone_physical:
            continue
        text = physical.text
        for word in sorted(edits.get(number, []), key=lambda w: w.start, reverse=True):
            before = text[: word.start]
            after_word = text[word.end :]
            # drop the blanks before the name (or, for the first name of the line, after it)
            text = before.rstrip(BLANKS) + after_word if before.strip(BLANKS) else before + after_word.lstrip(BLANKS)
        out.append(text + physical.eol)
    return Removal("".join(out), changes)
