"""``python -m sources.http``: the HTTP source (sources/http/webhook.py)."""

from sources.http.webhook import main

if __name__ == "__main__":
    main()
