"""``python -m broker.redis_server``: the embedded redis-server (broker/redis_server/embedded.py)."""

from broker.redis_server.embedded import main

if __name__ == "__main__":
    main()
