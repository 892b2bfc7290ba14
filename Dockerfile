# syntax=docker/dockerfile:1.7
#
# Troupe's two images (docs/DEPLOY.md explains the layout and the sizes):
#   target runtime -> ghcr.io/troupe-rl/troupe:<tag>        coordinator, learner, actor, troupe-watch,
#                     troupe-health; libtorch with its CUDA 13 libraries; hosted-env Python packages
#   target actor   -> ghcr.io/troupe-rl/troupe-actor:<tag>  actor, troupe-health; the CPU subset of
#                     libtorch; hosted-env Python packages
#
#   docker build --target runtime -t ghcr.io/troupe-rl/troupe:0.1.0 .
#   docker build --target actor   -t ghcr.io/troupe-rl/troupe-actor:0.1.0 .
#
# libtorch comes from the PyPI torch wheel (tch 0.24.0 wants exactly torch 2.11.0; the wheel is the
# CUDA 13 build). Its libraries carry an RPATH of $ORIGIN/../../nvidia/*/lib, so the images keep the
# wheel's layout, site-packages/{torch/lib,nvidia/...}, under the same path as in the build stage.
# The binaries' RUNPATH (from actor/build.rs and learner/build.rs) then points at the right place,
# and LD_LIBRARY_PATH says so again for any binary built without one.

# ---------------------------------------------------------------------------------------------
# torch: a Rust toolchain, Debian's python3.11 (built shared; PyO3 embeds it) and torch==2.11.0
# in a venv at /opt/torch. Kept apart from the build so that source changes don't re-download it.
FROM rust:1.95.0-bookworm AS torch
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/torch \
 && /opt/torch/bin/pip install --no-cache-dir --disable-pip-version-check torch==2.11.0

# ---------------------------------------------------------------------------------------------
# builder: the release build of every binary in the workspace. cargo's registry and target dir
# live in BuildKit cache mounts, so a rebuild after a source change is incremental.
FROM torch AS builder
ENV LIBTORCH_USE_PYTORCH=1 \
    PYO3_PYTHON=/usr/bin/python3.11 \
    VIRTUAL_ENV=/opt/torch \
    PATH=/opt/torch/bin:$PATH \
    CARGO_TARGET_DIR=/cache/target
WORKDIR /src
COPY . .
# The release profile keeps line tables (panic backtraces name files and lines); compressing the
# debug sections takes each binary from ~105 MB to ~30 MB and std's symbolizer still reads them.
RUN --mount=type=cache,id=troupe-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=troupe-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=troupe-target,target=/cache/target,sharing=locked \
    cargo build --release --workspace --bins --locked \
 && mkdir -p /out/bin \
 && for bin in coordinator learner actor troupe-watch troupe-health; do \
      objcopy --compress-debug-sections=zlib "$CARGO_TARGET_DIR/release/$bin" "/out/bin/$bin"; \
    done

# ---------------------------------------------------------------------------------------------
# libtorch: the shared libraries the images carry, staged under their final paths.
#   /stage/full: torch/lib and nvidia/*/lib whole (the learner dlopens libtorch_cuda.so, which
#                needs cuDNN, cuBLAS, NCCL, ...), less headers, static archives and the Python
#                binding (libtorch_python.so): ~3.6 GB.
#   /stage/cpu:  what the actor loads (ldd): libtorch_cpu.so, libc10.so, libgomp.so.1, and the
#                two CUDA libraries libtorch_cpu.so links even on CPU, libcudart and libcupti:
#                ~440 MB.
FROM torch AS libtorch
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG SITE=/opt/torch/lib/python3.11/site-packages
RUN mkdir -p "/stage/full$SITE/torch" \
 && cp -a "$SITE/torch/lib" "/stage/full$SITE/torch/lib" \
 && cp -a "$SITE/nvidia" "/stage/full$SITE/nvidia" \
 && rm -rf "/stage/full$SITE/torch/lib/libshm" "/stage/full$SITE/torch/lib/libshm_windows" \
           "/stage/full$SITE/torch/lib/libtorch_python.so" \
 && rm -rf "/stage/full$SITE"/nvidia/*/include \
 && find "/stage/full$SITE/nvidia" -name '*.a' -type f -delete \
 && mkdir -p "/stage/cpu$SITE/torch/lib" "/stage/cpu$SITE/nvidia/cu13/lib" \
 && cp -a "$SITE/torch/lib/libtorch_cpu.so" "$SITE/torch/lib/libc10.so" "$SITE/torch/lib/libgomp.so.1" \
          "/stage/cpu$SITE/torch/lib/" \
 && cp -a "$SITE/nvidia/cu13/lib/libcudart.so.13" "$SITE/nvidia/cu13/lib/libcupti.so.13" \
          "/stage/cpu$SITE/nvidia/cu13/lib/"

# ---------------------------------------------------------------------------------------------
# envs: the Python packages hosted envs import (gymnasium, ale-py, minatar, envpool, ...), pinned
# in scripts/requirements-envs.txt, in a venv at /opt/troupe/envs. The actor embeds libpython3.11
# and finds them through TROUPE_PYTHON_PATH (its --python-path).
FROM debian:bookworm-slim AS envs
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/requirements-envs.txt /tmp/requirements-envs.txt
RUN python3.11 -m venv /opt/troupe/envs \
 && /opt/troupe/envs/bin/pip install --no-cache-dir --disable-pip-version-check \
      -r /tmp/requirements-envs.txt

# ---------------------------------------------------------------------------------------------
# base: what both images share (so a node that pulls both stores these layers once): Debian's
# libpython3.11 (+ the python3.11 interpreter the envs venv links to), the envs venv, the troupe
# user and its working directory.
FROM debian:bookworm-slim AS base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG VERSION=0.1.0
LABEL org.opencontainers.image.source="https://github.com/troupe-rl/troupe" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="$VERSION"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libpython3.11 python3.11-minimal \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 troupe \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/troupe --no-create-home \
      --shell /usr/sbin/nologin troupe \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/troupe /var/lib/troupe/checkpoints
COPY --from=envs /opt/troupe/envs /opt/troupe/envs
# The envs venv is read-only for the troupe user: don't try to write .pyc files into it.
ENV TROUPE_PYTHON_PATH=/opt/troupe/envs/lib/python3.11/site-packages \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /var/lib/troupe

# ---------------------------------------------------------------------------------------------
# runtime: coordinator, learner, actor, troupe-watch, troupe-health with libtorch + CUDA 13.
# The learner runs on a GPU when the container gets one (NVIDIA Container Toolkit; driver >= 580
# for CUDA 13) and on the CPU otherwise. The workspace build links every binary against
# libtorch_cpu.so, the coordinator included, so all of them need the libraries below.
FROM base AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG SITE=/opt/torch/lib/python3.11/site-packages
LABEL org.opencontainers.image.title="troupe" \
      org.opencontainers.image.description="Troupe coordinator, learner and actor (libtorch with CUDA 13)"
COPY --from=libtorch /stage/full/ /
ENV LD_LIBRARY_PATH=$SITE/torch/lib:$SITE/nvidia/cu13/lib:$SITE/nvidia/cudnn/lib:$SITE/nvidia/nccl/lib:$SITE/nvidia/cusparselt/lib:$SITE/nvidia/nvshmem/lib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=builder /out/bin/ /usr/local/bin/
COPY configs/ /etc/troupe/configs/
# Fail the build, not the first run, if a library is missing (libcuda.so.1 comes from the host's
# driver at run time).
RUN for bin in coordinator learner actor troupe-watch troupe-health; do "$bin" --help >/dev/null; done \
 && missing=$(ldd "$SITE/torch/lib/libtorch_cuda.so" | grep 'not found' | grep -v 'libcuda\.so\.1' || true) \
 && if [ -n "$missing" ]; then echo "$missing" >&2; exit 1; fi
USER 10001:10001
# coordinator gRPC, learner gRPC, actor health, coordinator health, learner health;
# coordinator, actor, learner metrics.
EXPOSE 50051 50052 50053 50054 50055 9100 9101 9102
# troupe-health exits 0 when the process answers SERVING. It speaks plain-text gRPC only, so it
# must target a plain-text health port, never a gRPC port with TLS on. It reads
# TROUPE_HEALTH_ADDRESS (default 127.0.0.1:50051, the coordinator's gRPC port, which works
# without TLS; compose.yaml and the Helm chart run the coordinator with --health-listen
# 0.0.0.0:50054 and the learner with 0.0.0.0:50055 and check there; an actor serves health on
# 127.0.0.1:50053 by default) and TROUPE_HEALTH_SERVICE (default "": the process is alive;
# troupe.v1.Coordinator, troupe.v1.Learner, troupe.v1.Actor: it is ready). compose.yaml and the
# Helm chart set their own checks.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["troupe-health"]
CMD ["coordinator", "--help"]

# ---------------------------------------------------------------------------------------------
# actor: the actor and troupe-health with the CPU subset of libtorch (~440 MB instead of ~3.6 GB).
FROM base AS actor
ARG SITE=/opt/torch/lib/python3.11/site-packages
LABEL org.opencontainers.image.title="troupe-actor" \
      org.opencontainers.image.description="Troupe actor (CPU-only libtorch)"
COPY --from=libtorch /stage/cpu/ /
ENV LD_LIBRARY_PATH=$SITE/torch/lib:$SITE/nvidia/cu13/lib
COPY --from=builder /out/bin/actor /out/bin/troupe-health /usr/local/bin/
RUN actor --help >/dev/null && troupe-health --help >/dev/null
USER 10001:10001
EXPOSE 50053 9101
ENV TROUPE_HEALTH_ADDRESS=127.0.0.1:50053
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["troupe-health"]
CMD ["actor", "--help"]
