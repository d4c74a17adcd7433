# llmkit serve: an OpenAI-compatible server image.
#   CPU (default):  docker build -t llmkit .
#   CUDA:           docker build -t llmkit:cuda --build-arg BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 \
#                                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
#   Run:            docker run -p 8000:8000 -v llmkit-cache:/cache llmkit --model smollm2-135m-instruct
# The model is fetched into $LLMKIT_CACHE on first start (or mount a directory / .gguf file and pass its path).
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# CUDA bases come without Python; the slim Python base already has it
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 LLMKIT_CACHE=/cache

WORKDIR /app
# torch first, from the index matching the base (CPU or CUDA wheels), as its own cached layer
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} "torch>=2.5"
COPY pyproject.toml README.md ./
COPY llmkit ./llmkit
RUN pip install --no-cache-dir . llguidance

RUN useradd --create-home --uid 1000 llmkit && mkdir -p /cache && chown llmkit /cache
USER llmkit
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"
ENTRYPOINT ["llmkit", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--model", "smollm2-135m-instruct"]
