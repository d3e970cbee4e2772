# Slim production image: the app and the worker run from it as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY server ./server
COPY jobs ./jobs
COPY db ./db
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 APP_ENV=production PORT=3001 DATA_DIR=/data
RUN groupadd --system lustify && useradd --system --gid lustify --home /app lustify \
    && mkdir -p /app /data && chown lustify:lustify /app /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
USER lustify
EXPOSE 3001
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:3001/health', timeout=2).status == 200 else 1)"
CMD ["lustify", "serve"]
