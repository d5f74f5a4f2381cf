"""An S3-compatible CDN for tests: moto's ThreadedMotoServer over real HTTP on 127.0.0.1,
in a child process (moto's auth switch is process-global), with IAM enforcement on and
two users: `downloader` (s3:GetObject/ListBucket only) and `uploader` (read and write).
A write with the downloader's keys is refused with AccessDenied, as on a real CDN.
"""

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import boto3
import httpx

SERVER = "from moto.server import ThreadedMotoServer; import sys, threading; " \
         "s = ThreadedMotoServer(ip_address='127.0.0.1', port=int(sys.argv[1]), verbose=False); s.start(); " \
         "threading.Event().wait()"
READ_ACTIONS = ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"]
WRITE_ACTIONS = READ_ACTIONS + ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
BOOTSTRAP_KEYS = {"aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class KeyPair:
    access_key: str
    secret_key: str


class MotoS3:
    def __init__(self, bucket: str = "models"):
        self.bucket = bucket
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([sys.executable, "-c", SERVER, str(port)],
                                        env={**os.environ, "MOTO_CALL_RESET_API": "false"},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()
        self.downloader, self.uploader = self._provision()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/moto-api/", timeout=1)
                return
            except httpx.TransportError:
                if self.process.poll() is not None:
                    raise RuntimeError("moto server exited at start") from None
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("moto server did not start within 30 s")

    def client(self, service: str, keys: KeyPair | None = None):
        credentials = ({"aws_access_key_id": keys.access_key, "aws_secret_access_key": keys.secret_key}
                       if keys else BOOTSTRAP_KEYS)
        return boto3.session.Session().client(service, endpoint_url=self.url, region_name="us-east-1", **credentials)

    def _provision(self) -> tuple[KeyPair, KeyPair]:
        """Bucket, users and policies while auth is off; then auth on for every later call."""
        self.client("s3").create_bucket(Bucket=self.bucket)
        iam = self.client("iam")
        pairs = []
        for user, actions in (("downloader", READ_ACTIONS), ("uploader", WRITE_ACTIONS)):
            iam.create_user(UserName=user)
            policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": [
                f"arn:aws:s3:::{self.bucket}", f"arn:aws:s3:::{self.bucket}/*"]}]}
            iam.put_user_policy(UserName=user, PolicyName=f"{user}-s3", PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            pairs.append(KeyPair(key["AccessKeyId"], key["SecretAccessKey"]))
        httpx.post(f"{self.url}/moto-api/reset-auth", content=b"0").raise_for_status()
        return pairs[0], pairs[1]

    def cdn_yaml(self, bucket: bool = True) -> str:
        lines = [f"host: {self.url}",
                 f"downloader_access_key: {self.downloader.access_key}",
                 f"downloader_access_secret: {self.downloader.secret_key}",
                 f"uploader_access_key: {self.uploader.access_key}",
                 f"uploader_access_secret: {self.uploader.secret_key}"]
        return "\n".join(lines + ([f"bucket: {self.bucket}"] if bucket else [])) + "\n"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
