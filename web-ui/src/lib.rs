//! The HTTPS front of the box. It owns the TLS key, made inside the box, and must never log or echo chat content or secrets.
