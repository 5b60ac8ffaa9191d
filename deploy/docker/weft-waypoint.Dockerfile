# weft-waypoint, the per-namespace proxy behind HBONE. Build from the repository root:
#   docker build -f deploy/docker/weft-waypoint.Dockerfile -t weft/weft-waypoint:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p weft-waypoint

# No shell, no package manager, user 65532; it needs no privileges at all.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/weft-waypoint /usr/local/bin/weft-waypoint
ENTRYPOINT ["/usr/local/bin/weft-waypoint"]
