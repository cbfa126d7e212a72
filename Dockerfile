# syntax=docker/dockerfile:1
# HCS image: the `hcs` CLI (node agent, allocator, webhook), libhcs_interceptor.so and the simulated
# vendor driver libraries (used only when HCS_DRIVER_PATH / HCS_SIM_PROFILE point at them).
#
#   docker build -t hcs.local/hcs:dev .
#   helm install hcs helm/hcs -n hcs-system --create-namespace \
#     --set image.repository=hcs.local/hcs --set image.tag=dev
#
# The image runs as the non-root user 65532 (allocator, webhook). The node agent is the exception: the
# chart runs it as root and privileged, because it opens vendor device nodes under /dev, creates unix
# sockets in the kubelet's directories (/var/lib/kubelet/device-plugins, plugins_registry, plugins) and
# writes CDI specs, quota files and the interceptor onto the host.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: C libraries (simulated drivers, interceptor) and wheels for hcs and its dependencies ----
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# C parts first: they change less often than the Python code.
COPY driver/ driver/
COPY interceptor/ interceptor/
RUN make -C driver -j"$(nproc)" \
 && make -C interceptor -j"$(nproc)" \
 && test -f interceptor/build/libhcs_interceptor.so \
 && test -f driver/build/lib/libnvidia-ml.so.1
COPY pyproject.toml README.md ./
COPY hcs/ hcs/
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
 && ls /wheels/hcs-*.whl

# ---- runtime ----
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="hcs" \
      org.opencontainers.image.description="Hetero-Compute-Router: abstract accelerator requests on NVIDIA, Ascend, Hygon and Cambricon devices" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Build caches do not hash bind mounts: a builder that passes the source's digest here re-runs the
# install when hcs changed (e2e/image/build does); unset, it changes nothing.
ARG HCS_SOURCE_DIGEST=
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels hcs \
 && hcs --version
# libhcs_interceptor.so: the node agent's init container copies it to the host's interceptor dir.
COPY --from=build /src/interceptor/build/libhcs_interceptor.so /opt/hcs/lib/libhcs_interceptor.so
# Simulated vendor libraries and node profiles (kind e2e, demos): inert unless HCS_DRIVER_PATH=/opt/hcs/driver/lib.
COPY --from=build /src/driver/build/lib/ /opt/hcs/driver/lib/
COPY driver/profiles/ /opt/hcs/driver/profiles/
RUN groupadd --system --gid 65532 hcs \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin hcs
USER 65532:65532
ENTRYPOINT ["hcs"]
CMD ["--help"]
