"""lambdalite's broker layer: settings, the function registry, the event envelope, queues and results.

Everything here talks only to Redis and RQ; sources and workers build on it.
"""
