# editx, CPU image: the HTTP API and web UI of `editx serve` on port 7860.
#   docker build -t editx:cpu .
#   docker run -p 7860:7860 -v editx-data:/data -v /path/to/models:/models:ro -e EDITX_MODEL_DIR=/models editx:cpu
# Without EDITX_MODEL_DIR the offline "lite" backend serves. See docs/DEPLOYMENT.md.
FROM python:3.11.13-slim-bookworm

# Extras baked in; add "cluster" for a Ray/KubeRay image (it also adds wget for KubeRay's probes).
ARG EXTRAS=server,redis,metrics,lite
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/editx \
    XDG_CACHE_HOME=/home/editx/.cache \
    EDITX_DATA_DIR=/data \
    EDITX_CACHE_DIR=/data/cache

RUN groupadd --system --gid 10001 editx \
    && useradd --system --uid 10001 --gid editx --create-home --home-dir /home/editx editx \
    && mkdir -p /data \
    && chown editx:editx /data

# torch first, from the CPU wheel index: the package's own torch range is then already met and pip
# never pulls the multi-GB CUDA build.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

WORKDIR /opt/editx
COPY pyproject.toml README.md ./
COPY editx ./editx
RUN pip install ".[${EXTRAS}]" \
    && case ",${EXTRAS}," in *,lite,*) pip install --no-deps resemblyzer==0.1.4 silero-vad==6.2.3 pyopenjtalk-plus==0.4.1.post10 sudachipy==0.7.0 ;; esac \
    && case ",${EXTRAS}," in *,cluster,*) apt-get update \
        && apt-get install -y --no-install-recommends wget \
        && rm -rf /var/lib/apt/lists/* ;; esac

USER editx
VOLUME ["/data"]
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/healthz', timeout=4)"]
CMD ["editx", "serve", "--host", "0.0.0.0", "--port", "7860"]
