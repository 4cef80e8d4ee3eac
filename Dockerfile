# syntax=docker/dockerfile:1
# Tally's image: one static binary (no cgo) on distroless static, running as a non-root user.
#   docker build -t tally:local .
#   docker run --rm tally:local version
# The build stage's Go must be at least go.mod's go version.
ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first: this layer is cached until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# -trimpath: no build-machine paths in the binary. .dockerignore leaves out .git, so the
# binary carries no VCS revision (tally version prints "(devel)").
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/tally ./cmd/tally

# distroless static: CA certificates, tzdata and /etc/passwd with nonroot (65532); no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tally /usr/local/bin/tally
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tally"]
CMD ["--help"]
