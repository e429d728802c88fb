# fenced in a container. See "Docker" in README.md for how to run it; in short:
#
#   docker build -t fenced .
#   docker run -d --name fenced --network host \
#       --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_BIND_SERVICE \
#       -v /etc/fenced:/etc/fenced:ro fenced
#
# It must share the host's network namespace (--network host): that is where the rules
# it installs have to be. It needs
# CAP_NET_ADMIN (netlink to nf_tables, nft), which Docker does not grant by default,
# and CAP_NET_BIND_SERVICE for its DNS listener.

# python:3.11-slim, named by its Debian release (bookworm, Debian 12, the platform fenced
# is tested on): the plain tag moves to newer Debian releases over time.

# ---- build: install fenced and its dependencies into a venv without pip -------------
FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Same path as in the final image, so the venv's scripts and paths stay valid there.
RUN python -m venv --without-pip /opt/fenced

COPY pyproject.toml README.md /src/
COPY fenced /src/fenced
RUN python -m pip --python /opt/fenced/bin/python install --no-cache-dir /src

# ---- run: the slim interpreter, nft, and the venv -------------------------------------
FROM python:3.11-slim-bookworm

# nft: fenced installs its ruleset with `nft -f`. Not pinned to a version, so that a
# rebuild picks up bookworm's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nftables \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/fenced /opt/fenced
ENV PATH=/opt/fenced/bin:$PATH

# No policy is baked in: mount one at /etc/fenced (fenced.toml, fenced.d/*.toml).
# The example policy is in the package: /opt/fenced/lib/python3.11/site-packages/fenced/data/

# fenced is PID 1 here and handles SIGTERM/SIGINT (stop) and SIGHUP (reload) itself.
STOPSIGNAL SIGTERM
ENTRYPOINT ["fenced", "run"]
CMD ["-c", "/etc/fenced/fenced.toml"]
