"""An S3-compatible object store on 127.0.0.1 (SeaweedFS) for adapters kept at ``s3://...``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from streamtune.errors import StackError
from streamtune.settings import Settings
from streamtune.stack.base import GoBuilt, run_logged

__all__ = ["S3"]


class S3(GoBuilt):
    """An S3-compatible object store for ``training.adapters_dir = "s3://..."``: SeaweedFS (Apache-2.0) in one
    ``weed server`` process (master, volume server, filer and S3 gateway), every port on 127.0.0.1, one identity
    with the ``[s3]`` settings' fixed local credentials, and the ``s3.bucket`` bucket created at start.

    SeaweedFS's main module has ``replace`` directives, so ``go install module@version`` refuses it (as it would
    any such module); the module is downloaded through the Go module proxy and ``./weed`` built inside it."""

    name = "s3"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        s3 = settings.s3
        if s3.port is None:
            raise StackError(
                self.name,
                f"s3.endpoint_url={s3.endpoint_url!r} is not a local address",
                "the local stack runs SeaweedFS on 127.0.0.1; unset STREAMTUNE__S3__ENDPOINT_URL "
                "(a remote S3 store needs no `stack up`)",
            )
        self.port = s3.port
        self.binary = self.cache / "seaweedfs" / s3.seaweedfs_version / "bin" / "weed"

    def address(self) -> str:
        return f"http://127.0.0.1:{self.port} (bucket {self.settings.s3.bucket})"

    def ports(self) -> list[int]:
        s3 = self.settings.s3
        http = [s3.master_port, s3.volume_port, s3.filer_port, self.port]
        return [*http, *(port + 10000 for port in http)]  # SeaweedFS's gRPC convention, made explicit below

    def install(self) -> None:
        env = self.go_env("-mod=readonly")
        self.cache.mkdir(parents=True, exist_ok=True)
        module = f"github.com/seaweedfs/seaweedfs@{self.settings.s3.seaweedfs_version}"
        fix = "check that the Go module proxy is reachable and ~3 GB of disk are free, then `streamtune stack up` again"
        run_logged(
            self.name,
            ["go", "mod", "download", module],
            self.install_log,
            self.settings.stack.build_timeout_s,
            fix,
            env=env,
            cwd=self.cache,
        )
        source = self.go_cache / "mod" / module
        partial = self.binary.with_name("weed.partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        run_logged(
            self.name,
            ["go", "build", "-trimpath", "-o", str(partial), "./weed"],
            self.install_log,
            self.settings.stack.build_timeout_s,
            fix,
            env=env,
            cwd=source,
        )
        partial.rename(self.binary)

    def prepare(self) -> None:
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        s3 = self.settings.s3
        identity = {
            "identities": [
                {
                    "name": "streamtune",
                    "credentials": [{"accessKey": s3.key_id(), "secretKey": s3.secret()}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        config = self.home / "s3.json"
        config.touch(mode=0o600)
        config.chmod(0o600)  # the secret lives only here and in the settings
        config.write_text(json.dumps(identity))

    def command(self) -> tuple[list[str], dict[str, str]]:
        s3 = self.settings.s3
        cmd = [
            str(self.binary),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.home / 'data'}",
            f"-master.port={s3.master_port}",
            f"-master.port.grpc={s3.master_port + 10000}",
            f"-volume.port={s3.volume_port}",
            f"-volume.port.grpc={s3.volume_port + 10000}",
            f"-filer.port={s3.filer_port}",
            f"-filer.port.grpc={s3.filer_port + 10000}",
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={self.port + 10000}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.iam=false",
            f"-s3.config={self.home / 's3.json'}",
            "-volume.max=0",
            "-master.volumeSizeLimitMB=64",
            # one master: after an unclean stop it waits out an election timeout (10 s by default) before it
            # leads again, and every write waits with it
            "-master.electionTimeout=1s",
        ]
        return cmd, {"GOMAXPROCS": "2"}

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=3) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def after_start(self) -> None:
        s3 = self.settings.s3
        # A bucket is a folder under the filer's /buckets: asking the filer (HTTP, on 127.0.0.1) is instant,
        # where `weed shell` takes seconds to find the master after a restart.
        request = urllib.request.Request(f"http://127.0.0.1:{s3.filer_port}/buckets/{s3.bucket}", method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=10):
                return
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise StackError(self.name, f"the filer answered {exc.code} for /buckets/{s3.bucket}", "") from exc
        except OSError as exc:
            raise StackError(self.name, f"the filer on port {s3.filer_port} did not answer: {exc}", "") from exc
        run_logged(
            self.name,
            [str(self.binary), "shell", f"-master=127.0.0.1:{s3.master_port}", f"-filer=127.0.0.1:{s3.filer_port}"],
            self.log_file,
            60,
            f"create the bucket by hand: echo 's3.bucket.create -name {s3.bucket}' | {self.binary} shell",
            input=f"s3.bucket.create -name {s3.bucket}\n".encode(),
        )
