"""The control socket of a pool's owner: ``fastjob status`` and ``fastjob
resize`` talk to the Server that owns the pool.

An AF_UNIX stream socket ``control-<pid>.sock`` (mode 0600) in the pool's
private 0700 directory, named to children in FASTJOB_CONTROL.  Only the same
user may use it: the directory's mode keeps others out, and the owner checks
each peer's uid (SO_PEERCRED on Linux, LOCAL_PEERCRED on macOS/BSD).

The protocol is one JSON object per line each way::

    -> {"op": "status"}            <- {"ok": true, "status": {...}}
    -> {"op": "resize", "jobs": 4} <- {"ok": true, "status": {...}}
    (any failure)                  <- {"ok": false, "error": "one line"}
"""

from __future__ import annotations

import errno
import os
import select
import stat
import sys
import threading

from ._errors import JobserverError
from ._service_thread import start_service_thread

# Start-up: a pool's owner (every ``fastjob run``) starts the control socket,
# and most never get a request.  So the listening socket is a bare _socket
# (socket.py builds enums at import), and socket, json and struct are
# imported by the control thread when a request comes; glob and tempfile
# only by find_by_pid.  Not typing.TYPE_CHECKING: typing stays unimported.
import _socket  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Any, Callable

__all__ = [
    "ControlError", "ControlRefused", "ControlServer", "ENV", "find_by_pid", "private_dir", "request",
]

ENV = "FASTJOB_CONTROL"
MAX_LINE = 4096
TIMEOUT = 5.0


class ControlError(JobserverError):
    """The control socket is missing, stale, foreign or unusable."""


class ControlRefused(ControlError):
    """The owner answered, and refused the request (e.g. a bad size)."""


_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"  # tempfile's


def private_dir(prefix: str = "fastjob-") -> str:
    """A new 0700 directory in the temporary directory, as
    ``tempfile.mkdtemp(prefix=prefix)`` makes it, without importing tempfile
    (with shutil and random, milliseconds of a ``fastjob run``) in a process
    that has not: the same candidates in the same order (TMPDIR, TEMP, TMP,
    /tmp, /var/tmp, /usr/tmp, the current directory), the first where the
    directory can be made.  Where tempfile is loaded already (its tempdir may
    have been set), or nothing here works, tempfile does it."""
    tf = sys.modules.get("tempfile")
    if tf is None and os.name == "posix":
        bases = [d for d in (os.getenv(v) for v in ("TMPDIR", "TEMP", "TMP")) if d]
        bases += ["/tmp", "/var/tmp", "/usr/tmp"]
        try:
            bases.append(os.getcwd())
        except OSError:
            bases.append(os.curdir)
        for base in bases:
            if base != os.curdir:
                base = os.path.abspath(base)
            for _ in range(100):
                n = int.from_bytes(os.urandom(6), "little")
                name = ""
                for _ in range(8):
                    n, k = divmod(n, len(_NAME_CHARS))
                    name += _NAME_CHARS[k]
                path = os.path.join(base, prefix + name)
                try:
                    os.mkdir(path, 0o700)
                except FileExistsError:
                    continue
                except OSError:
                    break  # not this directory: the next one, as tempfile does
                return path
    import tempfile

    return tempfile.mkdtemp(prefix=prefix)


def socket_name(pid: int) -> str:
    return f"control-{pid}.sock"


def peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process at the other end (None if the OS cannot say)."""
    import socket
    import struct

    if hasattr(socket, "SO_PEERCRED"):  # Linux: struct ucred {pid, uid, gid}
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)
    if sys.platform == "darwin" or "bsd" in sys.platform:
        # LOCAL_PEERCRED (SOL_LOCAL=0, 1): struct xucred {u_int version; uid_t uid; ...}
        data = conn.getsockopt(0, 1, 76)
        _version, uid = struct.unpack_from("Ii", data)
        return int(uid)
    return None


class ControlServer:
    """Serve status and resize requests from a thread in the owner."""

    def __init__(
        self,
        directory: str,
        info: Callable[[], dict[str, Any]],
        resize: Callable[[int], None],
    ) -> None:
        if not hasattr(_socket, "AF_UNIX"):
            raise JobserverError("the control socket needs AF_UNIX sockets")
        self.path = os.path.join(directory, socket_name(os.getpid()))
        self._info = info
        self._resize = resize
        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        old = os.umask(0o177)  # born 0600: no window where others could connect
        try:
            self._sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._sock.listen(8)
        self._wake_r, self._wake_w = os.pipe()
        self._pid = os.getpid()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="fastjob-control", daemon=True)
        start_service_thread(self._thread)

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self._sock.fileno(), self._wake_r], [], [])
            if self._wake_r in ready or self._closed:
                return
            import socket  # the first request: not at start-up

            try:
                fd, _ = self._sock._accept()  # type: ignore[attr-defined]  # socket.accept's own call
            except OSError:
                continue
            conn = socket.socket(self._sock.family, self._sock.type, self._sock.proto, fileno=fd)
            with conn:
                try:
                    self._serve(conn)
                except (OSError, ValueError):
                    pass  # a client that went away or sent garbage: next one

    def _serve(self, conn: socket.socket) -> None:
        import json

        conn.settimeout(TIMEOUT)
        line = _recv_line(conn)  # read first, so the refusal reaches the peer
        uid = peer_uid(conn)
        if uid is not None and uid != os.geteuid():
            _send(conn, {"ok": False, "error": f"uid {uid} may not control this pool"})
            return
        try:
            msg = json.loads(line)
            if not isinstance(msg, dict):
                raise ValueError("a request is a JSON object")
            op = msg.get("op")
            if op == "resize":
                jobs = msg.get("jobs")
                if isinstance(jobs, bool) or not isinstance(jobs, int):
                    raise ValueError("resize needs an integer 'jobs'")
                self._resize(jobs)
            elif op != "status":
                raise ValueError(f"unknown op {op!r} (use 'status' or 'resize')")
            reply: dict[str, Any] = {"ok": True, "status": self._info()}
        except (ValueError, TypeError, JobserverError) as exc:
            reply = {"ok": False, "error": str(exc)}
        _send(conn, reply)

    def close(self) -> None:
        """Stop serving and remove the socket."""
        if self._closed:
            return
        self._closed = True
        owner = os.getpid() == self._pid  # a forked child must not stop the parent's
        if owner:
            os.write(self._wake_w, b"x")
            self._thread.join(5.0)
        self._sock.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        if owner:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _send(conn: socket.socket, obj: dict[str, Any]) -> None:
    import json

    conn.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


def _recv_line(conn: socket.socket) -> str:
    buf = b""
    while b"\n" not in buf:
        chunk = conn.recv(MAX_LINE)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_LINE:
            raise ValueError("request too long")
    return buf.split(b"\n", 1)[0].decode()


def check_socket(path: str) -> None:
    """ControlError unless ``path`` is a socket of ours in a private directory."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ControlError(
            f"the control socket {path} does not exist: the fastjob that owned the pool "
            "has exited (or FASTJOB_CONTROL is stale)"
        ) from None
    except OSError as exc:
        raise ControlError(f"cannot stat the control socket {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} (FASTJOB_CONTROL) is not a socket")
    if hasattr(os, "geteuid"):
        me = os.geteuid()
        parent = os.lstat(os.path.dirname(path) or ".")
        if st.st_uid != me or parent.st_uid != me:
            owner = st.st_uid if st.st_uid != me else parent.st_uid
            raise ControlError(
                f"the control socket {path} belongs to uid {owner}, not to you (uid {me}); "
                "only the pool's owner's user may use it"
            )
        if stat.S_IMODE(parent.st_mode) & 0o077:
            raise ControlError(
                f"the directory of the control socket {path} is open to other users "
                f"(mode {stat.S_IMODE(parent.st_mode):o}); fastjob only trusts a 0700 directory"
            )


def request(path: str, msg: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send one request; the owner's status dict, or ControlError."""
    import json
    import socket

    check_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                raise ControlError(
                    f"the control socket {path} is stale: nobody listens on it (its owner "
                    "was killed)"
                ) from None
            raise ControlError(f"cannot connect to the control socket {path}: {exc.strerror}") from None
        try:
            _send(sock, msg)
            line = _recv_line(sock)
        except (OSError, ValueError) as exc:
            raise ControlError(f"the control socket {path} did not answer: {exc}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(line)
    except ValueError:
        raise ControlError(f"the control socket {path} sent no valid reply") from None
    if not isinstance(reply, dict):
        raise ControlError(f"the control socket {path} sent no valid reply")
    if not reply.get("ok"):
        raise ControlRefused(str(reply.get("error", "the owner refused the request")))
    status = reply.get("status")
    if not isinstance(status, dict):
        raise ControlError(f"the control socket {path} sent no status")
    return status


def find_by_pid(pid: int) -> str:
    """The control socket of the fastjob owner with process id ``pid``."""
    import glob
    import tempfile

    pattern = os.path.join(tempfile.gettempdir(), "fastjob-*", socket_name(pid))
    found = sorted(glob.glob(pattern))
    if not found:
        raise ControlError(
            f"process {pid} has no fastjob control socket in {tempfile.gettempdir()} (is it a "
            "fastjob that owns a pool, run by you with the same TMPDIR?)"
        )
    return found[0]
