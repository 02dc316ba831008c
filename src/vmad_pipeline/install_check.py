"""One line instead of a 260-line traceback when the installed torch and torchvision do not
work together (e.g. a CPU torch from one index and a torchvision built for another: importing
torchvision then fails with "operator torchvision::nms does not exist"). Run before any
pipeline is imported (``pipeline_registry``)."""

from __future__ import annotations

from importlib import metadata

FIX = 'python3 -m pip install -e ".[test]" -c constraints.txt (the pair the suite passed with)'


class InstallError(RuntimeError):
    """The environment cannot run the project; the message says what to install."""


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def check_torch_pair() -> None:
    """Import torchvision (which imports torch and registers its operators); an InstallError
    naming both versions and the fix when that fails."""
    try:
        import torchvision.ops  # noqa: F401
    except (ImportError, RuntimeError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InstallError(
            f"torch {_version('torch')} and torchvision {_version('torchvision')} do not work "
            f"together ({first}); install the tested pair: {FIX}"
        ) from None
