"""The wire shapes of the two downstream APIs: OpenAI's and Anthropic's.

Parsing and validating request bodies, error bodies shaped like each API, server-sent events, usage
extraction, and translation between the two APIs (requests, responses and streams). Everything here
is pure: bytes and dicts in, bytes and dicts out. It never does I/O, never routes, and never imports
the rest of the sidecar except the settings-free helpers beside it.
"""
