# The operator image: the operator's extra (kopf, the Kubernetes client, cryptography, and the
# sidecar's route-table model it compiles into).
#
# Build from the repository root:
#   docker build -f images/operator.Dockerfile -t routemesh/operator .
# The build stage's steps are hack/build-rootfs.sh's, which builds the same tree without a daemon
# and is what the tests start. The runtime stage runs as a non-root user on a read-only root
# filesystem and needs no shell (the base has one; nothing runs it): the chart's command (`routemesh-operator`) is a console script
# run by Python directly.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY sidecar/ sidecar/
COPY images/locks/ images/locks/
COPY hack/build-rootfs.sh hack/
RUN bash hack/build-rootfs.sh operator /opt/routemesh

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/routemesh /opt/routemesh
ENV PYTHONPATH=/opt/routemesh/lib \
    PATH=/opt/routemesh/bin:/usr/local/bin:/usr/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8443 9443
ENTRYPOINT []
CMD ["routemesh-operator"]
