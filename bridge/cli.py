"""The ``bridge`` command line. Commands parse options, configure logging, build, then run."""

from __future__ import annotations

import click

from emulator.cli import emulator


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="dp-celery-bridge")
def main() -> None:
    """Run AWS Data Pipeline task-runner work on a Celery fleet."""


main.add_command(emulator)
