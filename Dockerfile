# CPU image: installs the project and, by default, runs the quickstart (train a small DDPM, write samples).
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . .
# The CPU wheels of PyTorch keep the image small; the project itself installs in a virtual environment.
RUN python -m venv .venv \
    && .venv/bin/pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -e '.[demo]' \
    && touch .venv/bin/activate

ENV HF_HOME=/app/.cache/huggingface
CMD ["make", "quickstart", "MNIST=ylecun/mnist"]
