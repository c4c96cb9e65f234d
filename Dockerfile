# lakera_addon: mitmproxy with the Lakera Guard addon, as a container (docs/deployment.md).
#
#   docker build -t lakera-guard-proxy .
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9464:9464 -e LAKERA_GUARD_API_KEY \
#       -v "$PWD/deploy/config:/config:ro" -v lakera-ca:/ca \
#       lakera-guard-proxy --set lakera_config=/config/policy.yaml
#
# Arguments after the image name go to lakera-mitmdump (mitmproxy's options: --mode,
# --allow-hosts, --set ...). The addon's configuration is checked before mitmproxy starts, and
# a bad one stops the container with a one-line error.
#
# The CA: mitmproxy's directory (confdir) is /ca. Mount your team's CA there (a directory
# holding mitmproxy-ca.pem, the key and the certificate, and mitmproxy-dhparam.pem; read-only
# is fine) so that every replica signs with the one CA your clients trust. An empty volume at
# /ca gets a CA created on first start and kept in the volume.

FROM python:3.13-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lakera_addon ./lakera_addon
# The package and its runtime dependencies only (no demo/test extras), in a venv copied below.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.13-slim
LABEL org.opencontainers.image.title="lakera_addon" \
      org.opencontainers.image.description="mitmproxy with the Lakera Guard addon: screens LLM API traffic" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/lakera
COPY --from=build /opt/venv /opt/venv
# A fixed non-root uid/gid (10001), which the Kubernetes manifests name in runAsUser/fsGroup.
# /ca is owned by it so that an empty named volume mounted there is writable (Docker copies the
# directory's ownership into a new volume).
RUN groupadd --system --gid 10001 lakera \
    && useradd --system --uid 10001 --gid lakera --home-dir /home/lakera --create-home \
       --shell /usr/sbin/nologin lakera \
    && mkdir -p /ca /config \
    && chown lakera:lakera /ca
USER 10001:10001
WORKDIR /home/lakera
VOLUME ["/ca"]
# 8080: the proxy (mitmproxy's --listen-port). 9464: Prometheus /metrics and /healthz, /readyz.
EXPOSE 8080 9464
# The addon loaded with a valid configuration. Python's urllib (slim has no curl), with proxies
# disabled so that an HTTP_PROXY in the environment cannot send the check elsewhere.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:9464/healthz', timeout=4)"]
ENTRYPOINT ["lakera-mitmdump", "--set", "confdir=/ca", "--listen-port", "8080", "--set", "lakera_metrics_host=0.0.0.0", "--set", "lakera_metrics_port=9464"]
CMD []
