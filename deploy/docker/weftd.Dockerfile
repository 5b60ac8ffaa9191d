# weftd, the node agent. Build from the repository root:
#   docker build -f deploy/docker/weftd.Dockerfile -t weft/weftd:0.1.0 .
# The eBPF object is checked in (ebpf/capture.bpf.o), so the build needs no clang.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p weftd

# weftd runs as root with a few capabilities (see the DaemonSet); it needs only libc.
FROM debian:bookworm-slim
COPY --from=build /src/target/release/weftd /usr/local/bin/weftd
ENTRYPOINT ["/usr/local/bin/weftd"]
CMD ["run", "--kubernetes", "--mesh", "/etc/weft/mesh.yaml"]
