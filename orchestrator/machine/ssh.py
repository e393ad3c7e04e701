"""SSH to the guest with paramiko: the only module that imports it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from ..core.errors import BootError, InfraError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    status: int
    stdout: str
    stderr: str


class Ssh:
    """One SSH connection to root@127.0.0.1:port with the throwaway key."""

    def __init__(self, port: int, key: Path, connect_timeout: float) -> None:
        self.port = port
        self.key = key
        self._client: paramiko.SSHClient | None = None
        self._connect(connect_timeout)

    def _connect(self, timeout: float) -> None:
        pkey = paramiko.Ed25519Key.from_private_key_file(str(self.key))
        end = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < end:
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # throwaway guest
            try:
                left = max(0.5, end - time.monotonic())
                client.connect("127.0.0.1", port=self.port, username="root", pkey=pkey,
                               timeout=min(5.0, left), banner_timeout=min(10.0, left),
                               auth_timeout=min(10.0, left), allow_agent=False,
                               look_for_keys=False)
                self._client = client
                return
            except (paramiko.SSHException, OSError, EOFError) as exc:
                last = exc
                client.close()
                time.sleep(0.1)
        raise BootError(f"no SSH answer on 127.0.0.1:{self.port} within {timeout:.0f} s ({last})")

    def run(self, command: str, timeout: float, stdin: bytes | None = None) -> Result:
        """Run ``command`` in the guest; InfraError if it does not end within ``timeout`` s in all
        (opening the channel, sending ``stdin`` and reading the output share that one deadline)."""
        assert self._client is not None
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise InfraError("SSH connection to the guest is gone")
        return run_on(transport, command, timeout, stdin)

    def put(self, data: bytes, guest_path: str, mode: int = 0o644, timeout: float = 60.0) -> None:
        """Copy bytes to ``guest_path`` over the channel (the guest has no sftp)."""
        res = self.run(f"cat > '{guest_path}' && chmod {mode:o} '{guest_path}'", timeout, stdin=data)
        if res.status != 0:
            raise InfraError(f"copying to {guest_path} failed: {res.stderr.strip()}")

    def put_file(self, src: Path, guest_path: str, timeout: float = 60.0) -> None:
        mode = src.stat().st_mode & 0o777
        self.put(src.read_bytes(), guest_path, mode=mode, timeout=timeout)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


#: bytes of ``stdin`` sent per call, each under what is left of the deadline
_CHUNK = 65536


def run_on(transport: Any, command: str, timeout: float, stdin: bytes | None = None,
           clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> Result:
    """Run ``command`` over a paramiko ``Transport``: one deadline of ``timeout`` s for the whole call.

    Each blocking step (open the channel, exec, each chunk of ``stdin``) waits at most what is
    left; the output is read until the exit status arrives or the deadline passes.  InfraError
    on the deadline or a broken connection.  ``clock``/``sleep``: for tests.
    """
    end = clock() + timeout

    def left() -> float:
        rest = end - clock()
        if rest <= 0:
            raise InfraError(f"guest command timed out after {timeout:.0f} s: {command}")
        return rest

    try:
        chan = transport.open_session(timeout=left())
    except (paramiko.SSHException, OSError, EOFError) as exc:
        # e.g. "Timeout opening channel." from a guest too busy (or stuck) to answer
        raise InfraError(f"cannot open an SSH channel to the guest ({exc}): {command}") from None
    out, err = bytearray(), bytearray()
    try:
        chan.settimeout(left())
        chan.exec_command(command)
        rest = memoryview(stdin or b"")
        while rest:
            chan.settimeout(left())
            rest = rest[chan.send(bytes(rest[:_CHUNK])):]
        chan.shutdown_write()
        while True:
            if chan.recv_ready():
                out += chan.recv(_CHUNK)
            elif chan.recv_stderr_ready():
                err += chan.recv_stderr(_CHUNK)
            elif chan.exit_status_ready():
                while chan.recv_ready():
                    out += chan.recv(_CHUNK)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(_CHUNK)
                break
            else:
                left()
                sleep(0.005)
        status = chan.recv_exit_status()
    except TimeoutError:
        raise InfraError(f"guest command timed out after {timeout:.0f} s: {command}") from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise InfraError(f"SSH to the guest failed ({exc}): {command}") from None
    finally:
        chan.close()
    return Result(status, out.decode(errors="replace"), err.decode(errors="replace"))
