//! A Prometheus remote-write 1.0 client.
