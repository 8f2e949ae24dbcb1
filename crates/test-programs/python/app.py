"""A wasi:http handler written in Python and built with componentize-py.

componentize-py components import all of WASI 0.2 (filesystem, sockets,
cli), so this guest checks that Verge runs them unmodified and still denies
what the manifest does not grant. Built by `cargo xtask guests`.
"""

import os
import socket

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


def probe_files() -> str:
    try:
        with open("/etc/passwd") as f:
            f.read()
        return "readable"
    except OSError as e:
        return f"denied ({type(e).__name__})"


def probe_socket() -> str:
    try:
        socket.create_connection(("127.0.0.1", 80), timeout=1)
        return "connected"
    except Exception as e:  # noqa: BLE001 - any failure means "denied" here
        return f"denied ({type(e).__name__})"


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        env = ",".join(f"{k}={v}" for k, v in sorted(os.environ.items()))
        text = (
            f"Hello from Python! path={path}\n"
            f"env=[{env}]\nfiles={probe_files()}\nsocket={probe_socket()}\n"
        )
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        response.set_status_code(200)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(text.encode())
        OutgoingBody.finish(body, None)
