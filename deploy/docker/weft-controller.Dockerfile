# weft-controller, the mesh CA. Build from the repository root:
#   docker build -f deploy/docker/weft-controller.Dockerfile -t weft/weft-controller:0.1.0 .
# The .proto is compiled by protox during the build, so no protoc is needed.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p weft-controller

# No shell, no package manager, user 65532 (the chart's runAsUser).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/weft-controller /usr/local/bin/weft-controller
ENTRYPOINT ["/usr/local/bin/weft-controller"]
