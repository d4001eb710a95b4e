"""The package imports its public names on first use (`inception_fast/__init__.py`): importing
a submodule, as a compile worker imports a kernel module, imports no torch, and the public
names work as they did when the package imported them up front."""

from __future__ import annotations

import subprocess
import sys

import pytest

import inception_fast


def fresh_python(code: str) -> list[str]:
    """What `code` prints in a new interpreter (this one has torch and the package loaded)."""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


def test_importing_the_package_imports_no_torch():
    code = "import sys, inception_fast; print('torch' in sys.modules, inception_fast.__version__)"
    assert fresh_python(code) == ["False", inception_fast.__version__]


def test_optimize_stays_the_function_once_its_submodule_is_imported():
    # `bench` imports the submodule inception_fast.optimize, which the import system then binds to
    # the package's attribute of that name, before anything asks the package for the function.
    code = ("from inception_fast import bench, optimize\n"
            "import inception_fast\n"
            "print(type(optimize).__name__, optimize is inception_fast.optimize, optimize.__module__)")
    assert fresh_python(code) == ["function", "True", "inception_fast.optimize"]


def test_the_public_names_are_those_of_their_modules():
    from inception_fast.architectures import inception_v4
    from inception_fast.compiler import UnsupportedModel
    from inception_fast.modules import FusedBlock, FusedNetwork, fuse_block
    from inception_fast.optimize import optimize

    expected = {"DEFAULT_CFG": inception_v4.DEFAULT_CFG, "InceptionV4": inception_v4.InceptionV4,
                "inception_v4": inception_v4.inception_v4, "UnsupportedModel": UnsupportedModel,
                "FusedBlock": FusedBlock, "FusedNetwork": FusedNetwork, "fuse_block": fuse_block,
                "optimize": optimize}
    assert sorted(inception_fast.__all__) == sorted(expected)
    assert {name: getattr(inception_fast, name) for name in inception_fast.__all__} == expected
    assert set(inception_fast.__all__) <= set(dir(inception_fast))


def test_submodules_are_attributes_and_other_names_are_not():
    # As when the package imported its submodules up front: one not imported yet is on first use.
    code = "import inception_fast; print(inception_fast.windows.__name__)"
    assert fresh_python(code) == ["inception_fast.windows"]
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        inception_fast.no_such_name  # noqa: B018
