"""``python -m fbloop``: the ``fbloop`` command."""

from .cli import main

if __name__ == "__main__":
    main()
