"""``python -m broker.cli``: the ``lambdalite`` command (broker/cli/cli.py)."""

from broker.cli.cli import main

if __name__ == "__main__":
    main()
