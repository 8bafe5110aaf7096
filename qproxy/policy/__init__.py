"""Access decisions as plain data and functions, with no I/O: who may connect (CIDR rules,
client certificates), how fast (token buckets) and how often at once (connections per
address). The daemon and the proxy ask; nothing here knows about sockets."""
