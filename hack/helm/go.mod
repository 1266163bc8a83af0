module routemesh.invalid/hack/helm

// Version pins only: builds the helm CLI from its published module, for the chart tests.

go 1.26.0

require helm.sh/helm/v3 v3.22.0
