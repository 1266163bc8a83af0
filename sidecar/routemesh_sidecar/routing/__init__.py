"""Routing: route match, signals, then the filter, scorer and picker plugins.

Called by the listener for each request with the route table the request started with. It returns
an ordered plan of attempts; it never performs I/O, so every decision is testable on its own.
"""
