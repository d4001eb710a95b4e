"""Every `torch.<module>.<name>` the package and its benchmarks name exists in the installed
torch. A misspelt name fails only when its line runs, and many such lines run only on a GPU
(under a CUDA-graph capture, in the tuner): this finds them on any machine."""

import ast
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.glob("inception_fast/**/*.py"), *ROOT.glob("benchmarks/**/*.py")])


def _dotted(node: ast.AST) -> list[str] | None:
    """["torch", "cuda", "synchronize"] for `torch.cuda.synchronize`, None for other roots."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "torch":
        return ["torch", *reversed(names)]
    return None


# Filled at run time: torch.ops by the ops the package registers.
RUNTIME_NAMESPACES = {"ops"}


def _missing(path: Path) -> list[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = _dotted(node) if isinstance(node, ast.Attribute) else None
        if not names or names[1] in RUNTIME_NAMESPACES:
            continue
        owner = torch
        for depth, name in enumerate(names[1:], start=1):
            if not isinstance(owner, types.ModuleType):
                break  # past the modules: an object's own attributes are not checked here
            if not hasattr(owner, name):
                found.add(f"{path.name}:{node.lineno}: {'.'.join(names[: depth + 1])}")
                break
            owner = getattr(owner, name)
    return sorted(found)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_torch_name_exists(path):
    missing = _missing(path)
    assert not missing, "names this torch does not have:\n" + "\n".join(missing)


def test_a_misspelt_name_is_found(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("import torch\ntorch.cuda.is_current_streamcapturing()\ntorch.cuda.synchronize()\n")
    assert [line.split(": ")[1] for line in _missing(source)] == ["torch.cuda.is_current_streamcapturing"]
