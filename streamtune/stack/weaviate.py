"""Weaviate as one ``weaviate-server`` on 127.0.0.1, built with ``go install`` at the pinned version: anonymous
access, no vectorizer modules, a single node that elects itself on the configured ports."""

from __future__ import annotations

import urllib.request

from streamtune.errors import StackError
from streamtune.settings import Settings
from streamtune.stack.base import LOCAL_HOSTS, GoBuilt, run_logged

__all__ = ["Weaviate"]


class Weaviate(GoBuilt):
    name = "weaviate"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        if settings.weaviate.host not in LOCAL_HOSTS:
            raise StackError(
                self.name,
                f"weaviate.host={settings.weaviate.host!r} is not a local address",
                "the local stack runs Weaviate on 127.0.0.1; unset STREAMTUNE__WEAVIATE__HOST "
                "(a remote Weaviate needs no `stack up`)",
            )
        version = settings.stack.weaviate_version
        self.gobin = self.cache / "weaviate" / version / "bin"
        self.binary = self.gobin / "weaviate-server"

    def address(self) -> str:
        w, metrics = self.settings.weaviate, self.settings.stack.weaviate_metrics_port
        return f"http://127.0.0.1:{w.http_port} (gRPC {w.grpc_port}" + (
            f"; metrics :{metrics}/metrics)" if metrics else ")"
        )

    def ports(self) -> list[int]:
        s, w = self.settings.stack, self.settings.weaviate
        return [
            w.http_port,
            w.grpc_port,
            s.weaviate_gossip_port,
            s.weaviate_gossip_port + 1,
            s.weaviate_raft_port,
            s.weaviate_raft_port + 1,
            *([s.weaviate_metrics_port] if s.weaviate_metrics_port else []),
        ]

    def exposed(self) -> list[int]:
        # Weaviate v1.39's gRPC server listens on ":<port>" (adapters/handlers/grpc/server.go), its cluster
        # data port likewise, and so does its Prometheus exporter (adapters/handlers/rest/configure_api.go);
        # no setting places them on 127.0.0.1. Said in `stack status` and the README.
        s = self.settings.stack
        metrics = [s.weaviate_metrics_port] if s.weaviate_metrics_port else []
        return [self.settings.weaviate.grpc_port, s.weaviate_gossip_port + 1, *metrics]

    def install(self) -> None:
        run_logged(
            self.name,
            [
                "go",
                "install",
                f"github.com/weaviate/weaviate/cmd/weaviate-server@{self.settings.stack.weaviate_version}",
            ],
            self.install_log,
            self.settings.stack.build_timeout_s,
            "check that the Go module proxy is reachable and ~5 GB of disk are free, then `streamtune stack up` again",
            env=self.go_env("-mod=mod", GOBIN=str(self.gobin)),
        )

    def prepare(self) -> None:
        (self.home / "data").mkdir(parents=True, exist_ok=True)

    def command(self) -> tuple[list[str], dict[str, str]]:
        s, w = self.settings.stack, self.settings.weaviate
        env = {
            "PERSISTENCE_DATA_PATH": str(self.home / "data"),
            "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
            "DEFAULT_VECTORIZER_MODULE": "none",
            "ENABLE_MODULES": "",
            "API_BASED_MODULES_DISABLED": "true",
            "CLUSTER_HOSTNAME": "node1",
            "CLUSTER_IN_LOCALHOST": "true",
            "CLUSTER_BIND_ADDR": "127.0.0.1",
            "CLUSTER_ADVERTISE_ADDR": "127.0.0.1",
            "CLUSTER_GOSSIP_BIND_PORT": str(s.weaviate_gossip_port),
            # A single node elects itself only with data port = gossip port + 1 and internal RPC port =
            # Raft port + 1 (the peer addresses it joins are derived that way); so both are derived here.
            "CLUSTER_DATA_BIND_PORT": str(s.weaviate_gossip_port + 1),
            "RAFT_PORT": str(s.weaviate_raft_port),
            "RAFT_INTERNAL_RPC_PORT": str(s.weaviate_raft_port + 1),
            "RAFT_BOOTSTRAP_EXPECT": "1",
            # Without an explicit join address a single node on non-default ports never elects itself.
            "RAFT_JOIN": f"node1:{s.weaviate_raft_port}",
            "GRPC_PORT": str(w.grpc_port),
            "DISABLE_TELEMETRY": "true",
            "LOG_LEVEL": "info",
            "GOMAXPROCS": "2",
            "PROMETHEUS_MONITORING_ENABLED": "true" if s.weaviate_metrics_port else "false",
        }
        if s.weaviate_metrics_port:
            env["PROMETHEUS_MONITORING_PORT"] = str(s.weaviate_metrics_port)
        cmd = [str(self.binary), "--host", "127.0.0.1", "--port", str(w.http_port), "--scheme", "http"]
        return cmd, env

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.settings.weaviate.http_port}/v1/.well-known/ready"
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return bool(response.status == 200)
        except OSError:
            return False
