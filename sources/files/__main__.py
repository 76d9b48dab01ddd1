"""``python -m sources.files``: the files source (sources/files/files.py)."""

from sources.files.files import main

if __name__ == "__main__":
    main()
