"""Small servers the tests run as separate processes (source passed to python -c)."""

import textwrap

# a TCP sink: accepts connections and reads everything; argv: ADDRESS PORT
SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen(64)
    print("ready", flush=True)
    def serve(c):
        while c.recv(65536):
            pass
        c.close()
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
    """
)
