# The control-plane image: `vdi-control serve`, non-root, no build tools in the final stage.
# PYTHON_IMAGE: both stages' base (images/build.sh passes a local Debian one, built offline).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY agent ./agent
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="vdi-control" \
      org.opencontainers.image.description="Control plane for GPU remote-desktop sessions on Kubernetes" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && groupadd --gid 1000 vdi && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent vdi
ENV PYTHONUNBUFFERED=1 \
    VDI_HOST=0.0.0.0 \
    VDI_PORT=8080
USER 1000:1000
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["vdi-control"]
CMD ["serve"]
