"""Test matrix and developer sessions.

``nox`` (no arguments) runs what CI runs: ``lint`` and ``tests`` on Python 3.11 (the suite includes the
2-process gloo DDP test, the example third-party plugin and the napari plugin on a real viewer, which
needs Xvfb and Qt's system libraries: see ``.ci/run``). The other Pythons are opt-in, because each
one needs its own multi-GB torch install::

    PYENV_VERSION=3.11.7:3.10.13:3.12.1:3.13.0 nox -s tests   # the whole matrix
    nox -s ddp                                                 # only the distributed tests
    nox -s plugins                                             # install the example plugin, run its tests
"""

from __future__ import annotations

import os

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
DEFAULT_PYTHON = "3.11"
EXAMPLE_PLUGIN = "examples/weakseg-example-plugin"
#: Drives the napari plugin's widget tests; installed with the napari extra, which brings the Qt binding.
PYTEST_QT = "pytest-qt>=4.4"

nox.options.sessions = ["lint", f"tests-{DEFAULT_PYTHON}"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session, extras: str = "test") -> None:
    session.install("-e", f".[{extras}]")


@nox.session(python=DEFAULT_PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the package, plugins, tests, examples and benchmarks."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "weakseg", "plugins", "tests", "examples", "benchmarks", "noxfile.py")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole test suite (fast tests, slow end-to-end runs, DDP, plugin and napari plugin tests).

    Under CI (``CI`` set) the napari tests must run: a missing napari or display fails them instead of
    skipping them (``WEAKSEG_REQUIRE_NAPARI``).
    """
    _install(session, "test,napari")
    session.install(PYTEST_QT)  # not in the test extra: without a Qt binding pytest-qt stops every pytest run
    env = {"OMP_NUM_THREADS": "2"}
    if os.environ.get("CI"):
        env["WEAKSEG_REQUIRE_NAPARI"] = "1"
    session.run("pytest", "-q", *session.posargs, env=env)


@nox.session(python=DEFAULT_PYTHON)
def ddp(session: nox.Session) -> None:
    """A 2-process DistributedDataParallel run on gloo (CPU)."""
    _install(session)
    session.run("pytest", "-q", "-m", "ddp", *session.posargs)


@nox.session(python=DEFAULT_PYTHON)
def plugins(session: nox.Session) -> None:
    """Install the example third-party plugin into the session and run the plugin tests against it."""
    _install(session)
    session.install("--no-build-isolation", "-e", EXAMPLE_PLUGIN)
    session.run("weakseg", "plugins")
    session.run("pytest", "-q", "tests/test_example_plugin.py", "tests/test_contracts.py", *session.posargs)
