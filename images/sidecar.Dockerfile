# The sidecar image: the sidecar's extra and nothing else (no kopf, no Kubernetes client).
#
# Build from the repository root:
#   docker build -f images/sidecar.Dockerfile -t routemesh/sidecar .
#   docker build -f images/sidecar.Dockerfile --build-arg EXTRAS=sidecar,tokenizer -t routemesh/sidecar:tokenizer .
#   docker build -f images/sidecar.Dockerfile --build-arg EXTRAS=sidecar,embeddings -t routemesh/sidecar:embeddings .
# EXTRAS picks the variant (its lock is images/locks/<extras, comma as dash>.txt): `sidecar`;
# `sidecar,tokenizer` with OpenAI's vocabularies for exact token counts; `sidecar,embeddings`
# with the embedding models of the Static and Transformer category tiers (the Static table is
# distilled and MiniLM quantized for int8 compute in the build stage, to the paths
# ROUTEMESH_SIDECAR_STATIC_MODEL and ROUTEMESH_SIDECAR_TRANSFORMER_MODEL name; without the extra,
# those files are absent and the sidecar refuses tables asking for those tiers). The build stage's steps
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
COPY hack/build-rootfs.sh hack/distill-static-model.py hack/quantize-minilm.py hack/
RUN bash hack/build-rootfs.sh "$EXTRAS" /opt/routemesh

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/routemesh /opt/routemesh
ENV PYTHONPATH=/opt/routemesh/lib \
    PATH=/opt/routemesh/bin:/usr/local/bin:/usr/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ROUTEMESH_SIDECAR_STATIC_MODEL=/opt/routemesh/models/static-minilm.npz \
    ROUTEMESH_SIDECAR_TRANSFORMER_MODEL=/opt/routemesh/models/minilm-int8-compute.onnx
USER 65532:65532
EXPOSE 4000 15000
ENTRYPOINT []
CMD ["routemesh-sidecar"]
