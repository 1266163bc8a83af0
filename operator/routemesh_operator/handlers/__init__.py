"""The kopf handlers: the only code that imports kopf.

They collect inputs from the cluster, call the pure compiler, publish the result and patch
status. They hold no routing logic of their own.
"""
