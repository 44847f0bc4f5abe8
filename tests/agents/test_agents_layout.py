"""agents/ reads like Stable-Baselines3: one job per file, modules talk through public names."""

from __future__ import annotations

import ast
from pathlib import Path

import hadmc.agents

AGENTS = Path(hadmc.agents.__file__).parent


def test_no_agents_module_reaches_into_another_objects_private_attributes():
    reaches = []
    for path in sorted(AGENTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    reaches.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert reaches == []


def test_the_trainer_module_stays_under_350_lines():
    assert len((AGENTS / "ppo.py").read_text().splitlines()) < 350
