"""A deadline for the request header, which uvicorn (0.54) does not have.

uvicorn's ``timeout_keep_alive`` closes a connection that sits idle *between* requests, but its timer is off from
the first byte of a request until the response: a client that sends half a header and stalls (or trickles a byte
a second, slowloris) holds the connection, a file descriptor and a slot of ``limit_concurrency`` forever. This
protocol is uvicorn's own h11 protocol with one more timer, armed when a connection opens and at the first byte of
each later request, and disarmed once h11 has the whole header: a header not complete within
``timeout_keep_alive`` seconds (the same setting, so one knob: ``clipforge serve --header-timeout``) closes the
connection. Header *size* is already bounded by h11 (``h11_max_incomplete_event_size``, 16 KiB by default).
"""
from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderTimeoutProtocol(H11Protocol):
    _header_timer = None

    def _arm(self) -> None:
        if self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.timeout_keep_alive, self._header_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection whose request header took over %s s", self.timeout_keep_alive)
            self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm()          # the first byte of a request after a keep-alive pause: its header has a deadline
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()       # h11 has the whole header (the body is the app's business)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)
