# The Airflow + pipeline image: the official Airflow image for Python 3.11 at the pinned Airflow
# version, this project's wheel with its pinned dependencies, and the DAGs in the image's DAG folder.
#
#   docker build -t keras-mlops-airflow .                                       # GPU-capable TensorFlow
#   docker build -t keras-mlops-airflow:cpu --build-arg TENSORFLOW_EXTRA= .      # CPU-only variant
#
# The serving image is serving/Dockerfile (the official tensorflow/serving). The versions below
# must equal the pins in requirements.txt (tests/test_package.py checks them).
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY serving ./serving
RUN pip install --no-cache-dir "setuptools>=64" && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
ARG AIRFLOW_VERSION
ARG TENSORFLOW_VERSION=2.21.0
# "and-cuda" pulls the CUDA and cuDNN wheels TensorFlow needs on GPU workers; empty for CPU only.
ARG TENSORFLOW_EXTRA=and-cuda
USER airflow
COPY --from=wheel /wheels /tmp/wheels
# Airflow pinned in the same command, as the official image's docs ask, so pip never moves it.
RUN pip install --no-cache-dir --find-links /tmp/wheels \
        "apache-airflow==${AIRFLOW_VERSION}" \
        "tensorflow${TENSORFLOW_EXTRA:+[${TENSORFLOW_EXTRA}]}==${TENSORFLOW_VERSION}" \
        "keras-mlops-pipeline[airflow]" \
    && rm -rf /tmp/wheels
COPY --chown=airflow:root dags/ /opt/airflow/dags/
# The project's plugin (schedule timetable, run notes, run reports, registry): Airflow's default plugins folder.
COPY --chown=airflow:root plugins/ /opt/airflow/plugins/
