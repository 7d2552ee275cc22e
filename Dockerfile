# syntax=docker/dockerfile:1
# pyserving as a drop-in for the tensorflow/serving image: gRPC on 8500, REST on 8501, the
# model MODEL_NAME under MODEL_BASE_PATH (default /models; also s3://, gs://, az://),
# extra arguments passed through; non-root; HEALTHCHECK on the readiness endpoint.
#
#   docker build -t pyserving .
#   docker run -p 8501:8501 -v /path/to/flowers:/models/flowers -e MODEL_NAME=flowers pyserving
#
# The wheels are those pinned in docker/requirements.lock (every package, exact versions):
# every model store (S3, GCS, Azure) and every model platform but PyTorch (docs/deploy.md).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheels
WORKDIR /build
COPY docker/requirements.lock ./
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels -r requirements.lock
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV MODEL_NAME=model \
    MODEL_BASE_PATH=/models \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 1000 pyserving \
    && useradd --system --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin pyserving
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --no-deps /wheels/*.whl \
    && ln -s /usr/local/bin/tensorflow_model_server /usr/bin/tensorflow_model_server
COPY docker/entrypoint.sh /usr/bin/tf_serving_entrypoint.sh
COPY docker/monitoring.config /etc/pyserving/monitoring.config
RUN mkdir -p /models /var/cache/pyserving \
    && chown pyserving:pyserving /models /var/cache/pyserving
USER 1000:1000
EXPOSE 8500 8501
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/v2/health/ready', timeout=4)"]
ENTRYPOINT ["/usr/bin/tf_serving_entrypoint.sh"]
