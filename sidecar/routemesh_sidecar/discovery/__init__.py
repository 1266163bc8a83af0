"""Route-table sources: a file source, and the operator's watch-based discovery source.

Each source delivers validated, immutable route tables and reports (ACKs or NACKs) what it was
given. It swaps the active table in one assignment; it never mutates a table in place.
"""
