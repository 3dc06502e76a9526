# syntax=docker/dockerfile:1
#
# gpulet image, in two stages:
#   models  - installs the `models` extra (CPU-only torch + onnx) and exports the model zoo to
#             /models as ONNX files. torch never reaches the runtime image.
#   runtime - the project without torch, the ONNX files copied from `models`, a non-root user.
#
# Build: docker build --target runtime -t gpulet .
# Run:   docker compose up --build   (see docker-compose.yml; it sets each container's command)

########################################################################################
# Stage 1: build the ONNX model zoo
########################################################################################
FROM python:3.11-slim AS models

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GPULET_MODEL_DIR=/models

# torch first, from the CPU index: the `models` extra pins torch==2.13.0 exactly, and installing
# that from PyPI would pull the (multi-GiB) CUDA build. With the CPU build already present
# ("2.13.0+cpu" satisfies "==2.13.0"), the next install leaves it alone.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /src
COPY . /src
RUN pip install --no-cache-dir '.[models]'

RUN gpulet models build && gpulet models list

########################################################################################
# Stage 2: runtime (router and agent)
########################################################################################
FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GPULET_MODEL_DIR=/models

WORKDIR /src
COPY . /src
# No torch here: the runtime only loads the ONNX files built above.
# For an NVIDIA agent image, install '.[gpu]' (nvidia-ml-py), then swap the ONNX Runtime wheel:
# `pip uninstall -y onnxruntime && pip install onnxruntime-gpu` (they are one module).
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/gpulet gpulet

COPY --from=models --chown=gpulet:gpulet /models /models

USER gpulet
WORKDIR /home/gpulet

# 8000: router (GPULET_ROUTER_PORT); 8100: agent (GPULET_AGENT_PORT)
EXPOSE 8000 8100

# No default role: compose runs `gpulet router` or `gpulet agent`.
CMD ["gpulet", "--help"]
