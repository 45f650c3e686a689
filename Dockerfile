# swarmwatch: API + web map, or a crawler worker (`swarmwatch crawl`).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md alembic.ini ./
COPY swarmwatch ./swarmwatch
COPY migrations ./migrations
COPY web ./web
RUN pip wheel --no-deps -w /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SWARMWATCH_DATABASE_URL=sqlite:////data/swarmwatch.db

# The wheel carries migrations/ and web/ inside the package (setup.py): nothing of the
# source tree is needed at run time, and benchmarks (bench/) stay out of the image.
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --home /data swarmwatch \
    && mkdir -p /data && chown swarmwatch /data

USER swarmwatch
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"
ENTRYPOINT ["swarmwatch"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
