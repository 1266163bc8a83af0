"""Embedding models for semantic category matching (the `embeddings` extra).

`encoders` holds the two tiers that embed (Static, Transformer) and `load_encoder`; the routing
layer (`routing.categories`) decides with their vectors. Importing this package imports none of
the extra's libraries: they load only when a route table asks for a tier.
"""
