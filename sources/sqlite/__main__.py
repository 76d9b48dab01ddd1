"""``python -m sources.sqlite``: the SQLite source (sources/sqlite/sqlite.py)."""

from sources.sqlite.sqlite import main

if __name__ == "__main__":
    main()
