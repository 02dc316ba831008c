"""The project's ``kedro run``: Kedro's own command, except that a mistake a user can fix (a
wrong parameter, a bad dataset, a leak refused, a missing input) prints its message and hint
alone and exits with status 1, instead of a 200-line traceback ending in the same line.
``VMAD_TRACEBACK=1`` shows the traceback too. Kedro loads this module's ``cli`` group over its
built-in project commands (docs.kedro.org, "how to add or modify CLI commands")."""

from __future__ import annotations

import functools
import os

import click
from kedro.framework.cli.project import run as kedro_run


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors whose message is the whole story: each names the problem and what to do."""
    from kedro.io import DatasetError

    from vmad_pipeline.configs.base import ConfigError
    from vmad_pipeline.datasets.manifest import IngestError
    from vmad_pipeline.datasets.validation.suite import ManifestValidationError
    from vmad_pipeline.inference.profiles import ProfileError
    from vmad_pipeline.install_check import InstallError
    from vmad_pipeline.models.strict import WeightsMismatchError
    from vmad_pipeline.splitting import SplitLeakError

    return (
        ConfigError,
        IngestError,
        ManifestValidationError,
        SplitLeakError,
        ProfileError,
        WeightsMismatchError,
        DatasetError,
        InstallError,
    )


def users_mistake(err: BaseException) -> BaseException | None:
    """The user error in ``err``'s chain (Kedro may wrap a node's error), or None."""
    known, seen = user_errors(), set()
    while err is not None and id(err) not in seen:
        if isinstance(err, known):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def friendly(callback):
    """``callback`` with a user's mistake turned into a one-message exit (status 1)."""

    @functools.wraps(callback)
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except Exception as err:
            found = users_mistake(err)
            if found is None or os.environ.get("VMAD_TRACEBACK"):
                raise
            name = type(found).__name__
            raise click.ClickException(
                f"{name}: {found}\n(the traceback: rerun with VMAD_TRACEBACK=1)"
            ) from None

    return wrapper


@click.group(name="vmad_pipeline")
def cli() -> None:
    """The project's commands (``kedro run`` with readable errors)."""


run = click.Command(
    name="run",
    params=kedro_run.params,
    callback=friendly(kedro_run.callback),
    help=kedro_run.help,
    short_help=kedro_run.short_help,
)
cli.add_command(run)
