# The agent in a container, driving the host's Docker engine through its socket (docs/operations.md,
# "In a container"). The base is named by a build arg and must hold Node.js 20.18 or later; on a
# machine without a registry it is made with debootstrap and `docker import` (see the docs).
#
#   deploy/install.sh --root "$PWD/.image" --no-start     # stage the built agent into .image/
#   docker build --build-arg BASE=iotistic-base:bookworm -t iotistic-agent .
#   docker run -d --name iotistic-agent --network host --restart always \
#     -v /run/docker.sock:/run/docker.sock -v iotistic-data:/var/lib/iotistic-agent \
#     -v /etc/iotistic-agent:/etc/iotistic-agent:ro iotistic-agent
ARG BASE=iotistic-base:bookworm
FROM ${BASE}

# What install.sh staged: the bundle, schema, examples, and the node_modules the bundle loads.
COPY .image/opt/iotistic-agent /opt/iotistic-agent
RUN ln -sfn /opt/iotistic-agent/dist/bundle/cli.js /usr/local/bin/iotistic-agent \
 && node -e 'const [a, b] = process.versions.node.split(".").map(Number); if (a < 20 || (a === 20 && b < 18)) { console.error(`node ${process.versions.node}: 20.18 or later is needed`); process.exit(1); }' \
 && iotistic-agent --version

# The queue, identity and keys: keep them on a volume, or a new container is a new device.
VOLUME /var/lib/iotistic-agent
# The agent stops on SIGTERM within 8 s (docker stop waits 10 s by default); the launcher passes it on.
# `launch`: self-updates land on the data volume (docs/lifecycle.md); with the config mounted read-only,
# update-config jobs fail (the file cannot be written).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/iotistic-agent", "launch"]
CMD ["--config", "/etc/iotistic-agent/config.json"]
