"""The downstream listener: the OpenAI- and Anthropic-compatible HTTP API the app calls.

It parses, validates and normalises requests, and answers malformed ones itself, in the error
shape of the API that was called. It hands valid requests to `routing`; it never picks a backend
or talks to an upstream itself.
"""
