"""``python -m vmad_pipeline`` (the ``vmad-pipeline`` command) runs the project like ``kedro
run``; ``vmad-pipeline chat IMAGE`` and ``vmad-pipeline demo`` start the interactive programs
(``apps.commands``). Kedro is imported only for a run: importing it configures its logging,
which writes to stdout, where the chat's JSON lines go."""

from __future__ import annotations

import sys
from pathlib import Path

APPS = ("chat", "demo")


def main(*args, **kwargs):
    if len(sys.argv) > 1 and sys.argv[1] in APPS and not args and not kwargs:
        from vmad_pipeline.apps.commands import main as app

        return app(sys.argv[1:])
    from kedro.framework.cli.utils import find_run_command
    from kedro.framework.project import configure_project

    package_name = Path(__file__).parent.name
    configure_project(package_name)
    run = find_run_command(package_name)
    return run(*args, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
