# pagerag: ingestion / query image, and the HTTP service (`pagerag serve`, the serve extra).
#
#   docker build -t pagerag .                          # CPU (fastembed + onnxruntime)
#   docker build -t pagerag:gpu --build-arg EXTRA=gpu .  # NVIDIA GPU (fastembed-gpu)
#   docker build -t pagerag:torch --build-arg EXTRA=torch .  # + the torch backend (ColQwen,
#                                                        # ColSmol …; CPU or NVIDIA GPU)
#   docker build -t pagerag:ray --build-arg RAY=true .   # + Ray (any EXTRA): --engine ray
#
# fastembed and fastembed-gpu ship the same module and must never be installed
# together, so the extra is chosen at build time: one image per device.
# Used by docker-compose.yml; see docs/deployment.md.

ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# cpu | gpu | torch: the pyproject extra to install. torch = cpu + pagerag[torch]:
# colpali-engine on PyPI's torch/torchvision, which on Linux are CUDA 13 builds that
# also run on the CPU (a ~6 GB image; a GPU needs driver >= 580). Pinned with === so a
# local '+cpu' torch wheel can never be picked beside PyPI's torchvision.
ARG EXTRA=cpu
# true: also the ray extra (`pagerag ingest --engine ray`; the compose file's ray service).
ARG RAY=false
ARG TORCH_PINS="torch===2.13.0 torchvision===0.28.0"
# GPU only: onnxruntime-gpu with the CUDA and cuDNN runtime libraries as pip wheels,
# so the slim base needs no CUDA install (the host only needs the NVIDIA driver and
# the NVIDIA Container Toolkit). Current onnxruntime-gpu wheels are CUDA 13 builds
# (driver >= 580); pin an older CUDA 12 build here for older drivers.
ARG ORT_GPU="onnxruntime-gpu[cuda,cudnn]"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# poppler-utils: pdfinfo/pdftoppm render the PDF pages. pipeline/ingest/render.py runs them
# directly (no pdf2image), under prlimit from util-linux, which the base image has.
RUN apt-get update \
 && apt-get install -y --no-install-recommends poppler-utils \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Only what the package needs (the build context may hold a virtualenv and data).
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY connectors ./connectors
COPY configs ./configs

RUN set -eu; \
    case "$EXTRA" in \
      cpu) pip install ".[cpu,serve]" ;; \
      gpu) pip install ".[gpu,serve]" "$ORT_GPU" \
           && if pip show fastembed >/dev/null 2>&1 || pip show onnxruntime >/dev/null 2>&1; then \
                echo "CPU onnxruntime/fastembed found in a GPU image" >&2; exit 1; fi \
           && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
           && find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' | sort -u \
                > /etc/ld.so.conf.d/nvidia-pip.conf \
           && ldconfig ;; \
      torch) pip install ".[cpu,serve,torch]" $TORCH_PINS \
           && python -c "import colpali_engine.models" ;; \
      *) echo "EXTRA must be cpu, gpu or torch, got '$EXTRA'" >&2; exit 1 ;; \
    esac; \
    if [ "$RAY" = true ]; then pip install ".[ray]" && python -c "import ray.data"; fi; \
    pagerag --help >/dev/null

# Model cache (mount a volume here: ColPali is 6.5 GB) and the input folder.
ENV FASTEMBED_CACHE_PATH=/models \
    HF_HOME=/models/huggingface \
    PAGERAG_CONFIG=/app/configs/server.yaml
RUN useradd --create-home --uid 10001 --user-group pagerag \
 && mkdir -p /models /data /uploads \
 && chown pagerag:pagerag /models /uploads
USER pagerag

ENTRYPOINT ["pagerag"]
CMD ["--help"]
