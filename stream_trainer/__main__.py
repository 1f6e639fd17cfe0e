"""``python -m stream_trainer``: the stop handler first, then the command line."""

from stream_trainer import stopping

stopping.install()  # before the imports that take seconds (see stopping.py)

from stream_trainer.cli import main  # noqa: E402

raise SystemExit(main())
