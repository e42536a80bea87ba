"""The pure-ASGI middleware: error format, key auth, tier quota."""
