"""Streams: the opening of every outbound TCP stream, as one reassembled byte stream.

One tracker (tracker.py) is fed by every source the kernel has (the first segment, later
chunks placed by TCP sequence number, the reply, TLS plaintext from the library uprobes)
and keeps each connection's opening, bounded in bytes and time, with its own loss
accounting.  Pure parsers peel what carries other protocols (socks.py, http.py,
websocket.py, tls.py; unwrap.py chains them) and the detectors read the typed view
(view.py) that the collector puts on the attributed event as ``ae.stream``.
"""
