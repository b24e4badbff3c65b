"""``python -m fbloop.cli``: the ``fbloop`` command."""

from . import main

if __name__ == "__main__":
    main()
