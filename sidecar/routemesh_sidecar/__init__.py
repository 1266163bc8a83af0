"""RouteMesh sidecar: the data plane that every LLM request of an injected pod passes through.

It runs on localhost in the app's pod, speaks the OpenAI and Anthropic APIs to the app
(downstream), and routes each request to a backend and endpoint (upstream) by the route table it
was given. It must never import the operator, kopf or a Kubernetes client: its only knowledge of
the cluster is the route table (`routemesh_sidecar.routetable`).
"""

__version__ = "0.2.0.dev0"
