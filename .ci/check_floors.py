"""Check that .ci/lowest-constraints.txt pins exactly the floors of pyproject.toml.

Every runtime dependency except torch must appear in the constraints file as ``name==floor``,
with ``floor`` the version of its ``name>=floor`` in ``[project] dependencies``. torch has no
line there: CI tests it only at 2.13.0 (see the comments of the constraints file).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)\s*(;.*)?$")
PIN = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*(\S+)\s*$")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors: dict[str, str] = {}
    for requirement in project["dependencies"]:
        match = REQUIREMENT.match(requirement)
        if match is None:
            print(f"pyproject.toml: {requirement!r} has no plain '>=' floor")
            return 1
        name = normalise(match.group(1))
        if name != "torch":
            floors[name] = match.group(2)
    pins: dict[str, str] = {}
    for line in (ROOT / ".ci" / "lowest-constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        if match is None:
            print(f".ci/lowest-constraints.txt: {line!r} is not 'name==version'")
            return 1
        pins[normalise(match.group(1))] = match.group(2)
    if pins != floors:
        for name in sorted(set(pins) | set(floors)):
            if pins.get(name) != floors.get(name):
                print(f"{name}: pyproject.toml floor {floors.get(name)}, "
                      f".ci/lowest-constraints.txt {pins.get(name)}")
        return 1
    print(f"floors match: {', '.join(f'{n}=={v}' for n, v in sorted(pins.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
