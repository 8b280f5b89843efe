//! TDX launch measurements (MRTD, RTMR0 to RTMR3) computed from build outputs, event-log parsing and replay, and quote verification. The core does no I/O, so it can run in a browser as wasm.
