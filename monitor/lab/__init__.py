"""A lab on this machine: "outside" hosts in network namespaces (documentation
address ranges, reachable only through our own veth pairs) with a real sshd, a
fake mining pool, a DNS server and listeners.  Used by `rlguard demo` and by
the end-to-end tests.  Needs root and iproute2."""
