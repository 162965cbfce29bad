"""The Docker build context as .dockerignore leaves it: which files of the checkout a
``docker build .`` sends to the builder.

Implements the part of Docker's pattern syntax this repository's .dockerignore uses: ``*``,
``?``, ``**``, character classes and ``!`` exceptions, each matched against a path and its
parents, the last matching pattern deciding (as Moby's patternmatcher does).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.docker.dockerfile import ROOT

DOCKERIGNORE = ROOT / ".dockerignore"


def _regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
            continue
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out + r"\Z")


def patterns(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern, str]]:
    """(is_exception, regex, pattern text) for each line that is not blank or a comment."""
    parsed = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        text = os.path.normpath(line.lstrip("!").strip().lstrip("/"))
        parsed.append((exception, _regex(text), text))
    return parsed


def excluded(relative: str, rules: list[tuple[bool, re.Pattern, str]]) -> bool:
    parts = relative.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for exception, regex, _ in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            verdict = not exception
    return verdict


def context_files(root: Path = ROOT, ignore: Path = DOCKERIGNORE) -> set[str]:
    """Paths, relative to root, of every file the build context holds."""
    rules = patterns(ignore)
    reopened = [text for exception, _, text in rules if exception]
    files = set()
    for directory, subdirectories, names in os.walk(root):
        here = Path(directory).relative_to(root).as_posix()
        here = "" if here == "." else here + "/"
        # Skip an excluded directory unless an exception could reopen something inside it.
        subdirectories[:] = [
            d for d in subdirectories
            if not excluded(here + d, rules)
            or any(text.startswith(here + d + "/") or "*" in text for text in reopened)]
        files.update(here + n for n in names if not excluded(here + n, rules))
    return files
