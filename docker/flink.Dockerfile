# The Flink image: Python 3.11, the locked Flink environment (apache-flink ships the Flink
# distribution, whose jobmanager/taskmanager scripts this image runs), the Kafka connector jar and
# the streamtune code. Used by the jobmanager, the taskmanager and the job-submitting service.
FROM maven:3.9-eclipse-temurin-17 AS jars
ARG CONNECTOR_VERSION=5.0.0-2.2
RUN mvn -q -B org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
      -Dartifact=org.apache.flink:flink-sql-connector-kafka:${CONNECTOR_VERSION} -DoutputDirectory=/jars

FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /app
COPY requirements/flink.lock requirements/
RUN uv venv /opt/venv && uv pip sync --python /opt/venv/bin/python requirements/flink.lock
COPY --from=jars /jars/ /opt/jars/
COPY pyproject.toml README.md ./
COPY streamtune streamtune
COPY streams streams
COPY retrieval retrieval
COPY training training
COPY inference inference
RUN uv pip install --python /opt/venv/bin/python --no-deps .
ENV PATH=/opt/venv/bin:$PATH \
    FLINK_HOME=/opt/venv/lib/python3.11/site-packages/pyflink \
    STREAMTUNE__FLINK__CONNECTOR_JAR=/opt/jars/flink-sql-connector-kafka-5.0.0-2.2.jar
ENTRYPOINT []
