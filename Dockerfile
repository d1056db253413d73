# Moongate's image: built with the Swift toolchain on Debian 12, run from an empty base that
# holds only the stripped binary (everything but glibc linked in: scripts/release-build), the
# C library it loads, CA certificates, a non-root user and the sandbox's config as an example.
#
#   docker build -t moongate .
#   docker run --rm -p 8080:8080 moongate                       # the sandbox config
#   docker run --rm -p 8080:8080 -v $PWD/conf:/etc/moongate moongate
#
# The runtime file system is laid out by scripts/image, the script whose --check runs the
# gateway inside that same file system in the test suite (no engine needed there).

FROM swift:6.3-bookworm AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      liblua5.4-dev libhiredis-dev libssl-dev libyaml-dev zlib1g-dev pkg-config ca-certificates binutils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
COPY Sources Sources
COPY Tests Tests
COPY scripts scripts
COPY sandbox sandbox
RUN scripts/release-build \
 && scripts/image --binary .build/release/moongate --out /rootfs

FROM scratch
COPY --from=build /rootfs /
# The sandbox config listens on 127.0.0.1 unless told otherwise; in a container the listener
# faces the container's network. The admin API stays on loopback.
ENV MOONGATE_ADDRESS=0.0.0.0 MOONGATE_PORT=8080
EXPOSE 8080
USER 65532:65532
WORKDIR /etc/moongate
ENTRYPOINT ["/usr/bin/moongate", "run"]
CMD ["--config", "/etc/moongate/gateway.yaml"]
