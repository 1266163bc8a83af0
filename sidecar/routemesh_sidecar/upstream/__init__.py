"""Upstream calls: connection pools, credentials, error classification, retries and breakers.

Circuit breaker (per backend), outlier detection (per endpoint) and health checking (active
probes) are three separate mechanisms here. Every failure is classified once, by where it came
from; retries, fallbacks and breakers read only the class. Nothing here parses downstream requests.
"""
