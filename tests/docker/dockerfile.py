"""Just enough of a Dockerfile parser for the tests in this directory: stages, their
instructions with continuation lines joined and comments dropped, and the JSON (exec) form.

The tests read facts off the Dockerfiles (who the final stage runs as, what pip installs, which
ports are exposed) instead of building the images, since no Docker engine runs here.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVING = ROOT / "docker" / "serving.Dockerfile"
TRAINING = ROOT / "docker" / "training.Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: RUN, COPY, ...
    arguments: str  # the rest, continuation lines joined by spaces
    line: int  # where it starts, 1-based


@dataclass
class Stage:
    base: str  # the FROM image
    name: str | None  # the AS name
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """Every ENV of the stage, in the KEY=VALUE form (the only one used here)."""
        values = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.arguments):
                key, _, value = pair.partition("=")
                values[key] = value
        return values


def instructions(path: Path) -> list[Instruction]:
    found, pending, start = [], "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # a comment inside a continuation does not end it, as in Docker
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = ""
    assert not pending, f"{path}: a continuation runs past the end of the file"
    return found


def stages(path: Path) -> list[Stage]:
    parsed: list[Stage] = []
    for instruction in instructions(path):
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            parsed.append(Stage(words[0], name))
        elif parsed:  # an ARG before the first FROM belongs to no stage
            parsed[-1].instructions.append(instruction)
    return parsed


def exec_form(instruction: Instruction) -> list[str]:
    """ENTRYPOINT / CMD arguments in JSON form; the shell form is an error (signals would go to
    a shell, not to the server)."""
    value = json.loads(instruction.arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), instruction
    return value


def copy_sources(stage: Stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not --from another stage)."""
    copies = []
    for instruction in stage.all("COPY"):
        words = shlex.split(instruction.arguments)
        if any(w.startswith("--from") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        copies.append((paths[:-1], paths[-1]))
    return copies
