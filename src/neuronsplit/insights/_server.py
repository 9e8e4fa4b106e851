"""Serving Captum Insights from a daemon thread, without leaking its global visualizer.

Private module of :mod:`neuronsplit.insights` (public entry point:
:func:`neuronsplit.insights.serve`, which checks that Captum Insights and its front end are
installed first). Captum's own ``serve()`` starts a non-daemon thread and keeps global state;
here Flask runs through ``werkzeug.serving.make_server`` in a **daemon** thread, and
:meth:`InsightsServer.shutdown` stops it and restores Insights' module global.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["InsightsServer", "start_server"]


@dataclass
class InsightsServer:
    """A running Insights server (daemon thread); :meth:`shutdown` stops it.

    Attributes
    ----------
    host, port : str, int
        Where it listens.
    """

    host: str
    port: int
    _server: Any = field(repr=False)
    _thread: threading.Thread | None = field(repr=False)
    _previous: Any = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        """``http://host:port/``."""
        return f"http://{self.host}:{self.port}/"

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop serving, close the socket and restore Insights' global visualizer."""
        if self._stopped:
            return
        from captum.insights.attr_vis import server as server_module

        self._stopped = True
        try:
            if self._thread is not None:
                self._server.shutdown()
                self._thread.join(timeout)
        finally:
            self._server.server_close()
            server_module.visualizer = self._previous

    def __enter__(self) -> InsightsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def start_server(
    visualizer: Any, *, host: str, port: int, blocking: bool, quiet: bool
) -> InsightsServer:
    """Serve ``visualizer`` (an ``AttributionVisualizer``) with werkzeug.

    See :func:`neuronsplit.insights.serve` for the parameters; Captum Insights must be
    importable.

    Returns
    -------
    InsightsServer
        Already shut down when ``blocking`` (after Ctrl+C), else running in a daemon thread.
    """
    from captum.insights.attr_vis import server as server_module
    from werkzeug.serving import WSGIRequestHandler, make_server

    class _Handler(WSGIRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            if not quiet:
                super().log_request(*args, **kwargs)

    previous = server_module.visualizer
    server_module.visualizer = visualizer  # Insights' routes read this module global
    try:
        wsgi = make_server(
            host, int(port), server_module.app, threaded=True, request_handler=_Handler
        )
    except BaseException:
        server_module.visualizer = previous
        raise
    wsgi.daemon_threads = True  # request threads must not keep the process alive either
    if blocking:
        handle = InsightsServer(host, int(wsgi.server_port), wsgi, None, previous)
        try:
            wsgi.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            handle.shutdown()
        return handle
    thread = threading.Thread(target=wsgi.serve_forever, name="neuronsplit-insights", daemon=True)
    thread.start()
    return InsightsServer(host, int(wsgi.server_port), wsgi, thread, previous)
