//! The guest's trusted execution environment: TDX quotes and event logs, or a loudly simulated stand-in for tests.
