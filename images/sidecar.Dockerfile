# The sidecar image: the sidecar's extra and nothing else (no kopf, no Kubernetes client).
#
# Build from the repository root:
#   docker build -f images/sidecar.Dockerfile -t routemesh/sidecar .
#   docker build -f images/sidecar.Dockerfile --build-arg EXTRAS=sidecar,tokenizer -t routemesh/sidecar:tokenizer .
# EXTRAS picks the variant (its lock is images/locks/<extras, comma as dash>.txt): `sidecar`, or
# `sidecar,tokenizer` with OpenAI's vocabularies for exact token counts. The build stage's steps
# are hack/build-rootfs.sh's, which builds the same tree without a daemon and is what the tests
# start. The runtime stage runs as a non-root user on a read-only root filesystem and needs no
# shell (the base has one; nothing runs it): the chart's command (`routemesh-sidecar`) is a console script run by Python directly.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=sidecar
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY sidecar/ sidecar/
COPY images/locks/ images/locks/
COPY hack/build-rootfs.sh hack/
RUN bash hack/build-rootfs.sh "$EXTRAS" /opt/routemesh

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/routemesh /opt/routemesh
ENV PYTHONPATH=/opt/routemesh/lib \
    PATH=/opt/routemesh/bin:/usr/local/bin:/usr/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 4000 15000
ENTRYPOINT []
CMD ["routemesh-sidecar"]
