# One image for the API, both workers and the migration job (docker-compose.yml picks the
# command). Production shape: dependencies in their own layer, no build tools, non-root.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv

# Dependencies first, straight from pyproject.toml, so code changes reuse this layer.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY app ./app
# Bytecode ahead of time: the workflow sandbox re-imports the workflow modules for every
# workflow run and would otherwise compile them from source each time (docs/performance.md).
RUN pip install --no-deps . \
    && python -m compileall -q "$(python -c 'import app, os; print(os.path.dirname(app.__file__))')" \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app

USER app
# The Worker Deployment build id (docs/operations.md, "Deploying a new version"): pass
# `--build-arg WORKER_BUILD_ID=<tag>`; empty = a hash of the code in the image.
ARG WORKER_BUILD_ID=""
ENV WORKER_BUILD_ID=${WORKER_BUILD_ID}
# The API binds all interfaces inside the container; it then insists on API_KEYS.
ENV API_HOST=0.0.0.0 \
    API_PORT=8000 \
    LOG_FORMAT=json
EXPOSE 8000

CMD ["python", "-m", "app.api"]
