"""``python -m collector`` and the ``collector`` command."""

import sys

from collector import early


def run() -> None:
    early.install()  # before the imports that take time: a SIGTERM meanwhile stops the collector cleanly
    from collector.cli import main  # noqa: PLC0415

    sys.exit(main())


if __name__ == "__main__":
    run()
