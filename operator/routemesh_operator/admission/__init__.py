"""The admission webhook: its certificates and its server; injection/ builds the patch."""
